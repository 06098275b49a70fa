//! Public-key signatures in AUTH payloads: the RFC 7296 methods (1: RSA PKCS#1 v1.5 with
//! SHA-1; 9 and 10: ECDSA P-256/SHA-256 and P-384/SHA-384 as raw r|s, RFC 4754) and RFC 7427
//! digital signatures (method 14: an AlgorithmIdentifier, then the signature) with RSA-PSS,
//! RSA PKCS#1 v1.5 (SHA-256/384/512), ECDSA P-256/P-384 (DER signatures) and Ed25519; the
//! SIGNATURE_HASH_ALGORITHMS values (RFC 7427 section 4, RFC 8420 for Ed25519's "identity").
//!
//! Private keys are ring's (`RsaKeyPair`, `EcdsaKeyPair`, `Ed25519KeyPair`), from PKCS#8 or
//! (RSA) PKCS#1 DER: never the `rsa` crate (RUSTSEC-2023-0071). Signatures are checked with
//! ring against the public key of a certificate the caller already validated.
//!
//! ring draws ECDSA nonces and RSA-PSS salts from the operating system (`SystemRandom`: its
//! random source cannot be replaced); no protocol state depends on those bytes.
//!
//! Owns: choosing the scheme for our key and the peer's announced hashes; making and
//! checking AUTH signature data.
//! Must never: accept SHA-1 unless the connection allows it; panic on any AUTH bytes; print
//! key material (`Debug` names the key type only).
#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::arithmetic_side_effects
)]

use ring::rand::SystemRandom;
use ring::signature::{self as sig, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use x509_parser::prelude::FromDer;
use x509_parser::x509::{AlgorithmIdentifier, SubjectPublicKeyInfo};

use super::auth::AuthError;

/// AUTH methods (RFC 7296 3.8, RFC 7427 3).
pub mod method {
    pub const RSA_SIG: u8 = 1;
    pub const ECDSA_256: u8 = 9;
    pub const ECDSA_384: u8 = 10;
    pub const ECDSA_521: u8 = 11;
    pub const DIGITAL_SIGNATURE: u8 = 14;
}

/// Hash algorithm ids of SIGNATURE_HASH_ALGORITHMS (IANA "IKEv2 Hash Algorithms").
pub mod hash {
    pub const SHA1: u16 = 1;
    pub const SHA2_256: u16 = 2;
    pub const SHA2_384: u16 = 3;
    pub const SHA2_512: u16 = 4;
    /// RFC 8420: the signature algorithm hashes (or does not) by itself: Ed25519.
    pub const IDENTITY: u16 = 5;
}

/// The hashes we announce: SHA-2 and identity, SHA-1 only when a connection allows it.
pub fn announced_hashes(allow_sha1: bool) -> Vec<u16> {
    let mut v = Vec::with_capacity(5);
    if allow_sha1 {
        v.push(hash::SHA1);
    }
    v.extend([
        hash::SHA2_256,
        hash::SHA2_384,
        hash::SHA2_512,
        hash::IDENTITY,
    ]);
    v
}

/// SIGNATURE_HASH_ALGORITHMS notify data: 16-bit ids.
pub fn encode_hashes(h: &[u16]) -> Vec<u8> {
    h.iter().flat_map(|x| x.to_be_bytes()).collect()
}

/// SIGNATURE_HASH_ALGORITHMS notify data back to ids (an odd trailing byte is ignored).
pub fn decode_hashes(data: &[u8]) -> Vec<u16> {
    data.chunks_exact(2)
        .map(|c| {
            u16::from_be_bytes([
                c.first().copied().unwrap_or(0),
                c.get(1).copied().unwrap_or(0),
            ])
        })
        .collect()
}

// AlgorithmIdentifiers as we send them (DER, RFC 7427 appendix A).
const ALG_RSA_SHA256: &[u8] = &hex_der::RSA_SHA256;
const ALG_RSA_SHA384: &[u8] = &hex_der::RSA_SHA384;
const ALG_RSA_SHA512: &[u8] = &hex_der::RSA_SHA512;
const ALG_PSS_SHA256: &[u8] = &hex_der::PSS_SHA256;
const ALG_PSS_SHA384: &[u8] = &hex_der::PSS_SHA384;
const ALG_PSS_SHA512: &[u8] = &hex_der::PSS_SHA512;
const ALG_ECDSA_SHA256: &[u8] = &hex_der::ECDSA_SHA256;
const ALG_ECDSA_SHA384: &[u8] = &hex_der::ECDSA_SHA384;
const ALG_ED25519: &[u8] = &hex_der::ED25519;

mod hex_der {
    const fn rsa(last: u8) -> [u8; 15] {
        [
            0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, last, 0x05,
            0x00,
        ]
    }
    const fn pss(h: u8, salt: u8) -> [u8; 67] {
        [
            0x30, 0x41, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a, 0x30,
            0x34, 0xa0, 0x0f, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04,
            0x02, h, 0x05, 0x00, 0xa1, 0x1c, 0x30, 0x1a, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7,
            0x0d, 0x01, 0x01, 0x08, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03,
            0x04, 0x02, h, 0x05, 0x00, 0xa2, 0x03, 0x02, 0x01, salt,
        ]
    }
    pub const RSA_SHA256: [u8; 15] = rsa(0x0b);
    pub const RSA_SHA384: [u8; 15] = rsa(0x0c);
    pub const RSA_SHA512: [u8; 15] = rsa(0x0d);
    pub const PSS_SHA256: [u8; 67] = pss(0x01, 32);
    pub const PSS_SHA384: [u8; 67] = pss(0x02, 48);
    pub const PSS_SHA512: [u8; 67] = pss(0x03, 64);
    pub const ECDSA_SHA256: [u8; 12] = [
        0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
    ];
    pub const ECDSA_SHA384: [u8; 12] = [
        0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03,
    ];
    pub const ED25519: [u8; 7] = [0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70];
}

// OIDs (content octets) the verifier recognises.
const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_RSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05];
const OID_RSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
const OID_RSA_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c];
const OID_RSA_SHA512: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d];
const OID_RSA_PSS: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];
const OID_MGF1: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08];
const OID_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
const OID_SHA384: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];
const OID_SHA512: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03];
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_ECDSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
const OID_ECDSA_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];

/// What kind of key a certificate carries (for the checks that depend on it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

/// The key kind of a SubjectPublicKeyInfo, or why it is refused (another curve, another
/// algorithm).
pub fn key_kind(spki: &SubjectPublicKeyInfo<'_>) -> Result<KeyKind, AuthError> {
    let alg = spki.algorithm.algorithm.as_bytes();
    if alg == OID_RSA_ENCRYPTION {
        Ok(KeyKind::Rsa)
    } else if alg == OID_ED25519 {
        Ok(KeyKind::Ed25519)
    } else if alg == OID_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        match curve.as_ref().map(|c| c.as_bytes()) {
            Some(c) if c == OID_P256 => Ok(KeyKind::P256),
            Some(c) if c == OID_P384 => Ok(KeyKind::P384),
            _ => Err(AuthError::CurveNotAllowed),
        }
    } else {
        Err(AuthError::KeyType)
    }
}

/// Our private key, as ring holds it.
pub enum SigningKey {
    Rsa(sig::RsaKeyPair),
    P256(sig::EcdsaKeyPair, sig::EcdsaKeyPair),
    P384(sig::EcdsaKeyPair, sig::EcdsaKeyPair),
    Ed25519(sig::Ed25519KeyPair),
}

impl core::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let kind = match self {
            SigningKey::Rsa(_) => "rsa",
            SigningKey::P256(..) => "ecdsa-p256",
            SigningKey::P384(..) => "ecdsa-p384",
            SigningKey::Ed25519(_) => "ed25519",
        };
        write!(f, "SigningKey({kind}, <secret>)")
    }
}

/// Why a private key did not load (the config loader adds file and key path).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("no PEM private key in it ({0})")]
    Pem(String),
    #[error(
        "SEC1 \"EC PRIVATE KEY\" is not read: convert it with `openssl pkcs8 -topk8 -nocrypt`"
    )]
    Sec1,
    #[error("not an RSA (2048 bits or more), ECDSA P-256/P-384 or Ed25519 key ring accepts")]
    Unsupported,
}

impl SigningKey {
    /// From a PEM file's bytes: "PRIVATE KEY" (PKCS#8) or "RSA PRIVATE KEY" (PKCS#1).
    pub fn from_pem(pem: &[u8]) -> Result<SigningKey, KeyError> {
        match PrivateKeyDer::from_pem_slice(pem).map_err(|e| KeyError::Pem(e.to_string()))? {
            PrivateKeyDer::Pkcs8(k) => Self::from_pkcs8(k.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(k) => sig::RsaKeyPair::from_der(k.secret_pkcs1_der())
                .map(SigningKey::Rsa)
                .map_err(|_| KeyError::Unsupported),
            PrivateKeyDer::Sec1(_) => Err(KeyError::Sec1),
            _ => Err(KeyError::Unsupported),
        }
    }

    /// From PKCS#8 DER of any of the supported kinds.
    pub fn from_pkcs8(der: &[u8]) -> Result<SigningKey, KeyError> {
        let rng = SystemRandom::new();
        if let Ok(k) = sig::RsaKeyPair::from_pkcs8(der) {
            return Ok(SigningKey::Rsa(k));
        }
        if let (Ok(a), Ok(f)) = (
            sig::EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_ASN1_SIGNING, der, &rng),
            sig::EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng),
        ) {
            return Ok(SigningKey::P256(a, f));
        }
        if let (Ok(a), Ok(f)) = (
            sig::EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P384_SHA384_ASN1_SIGNING, der, &rng),
            sig::EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P384_SHA384_FIXED_SIGNING, der, &rng),
        ) {
            return Ok(SigningKey::P384(a, f));
        }
        sig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map(SigningKey::Ed25519)
            .map_err(|_| KeyError::Unsupported)
    }

    pub fn kind(&self) -> KeyKind {
        match self {
            SigningKey::Rsa(_) => KeyKind::Rsa,
            SigningKey::P256(..) => KeyKind::P256,
            SigningKey::P384(..) => KeyKind::P384,
            SigningKey::Ed25519(_) => KeyKind::Ed25519,
        }
    }

    /// The public key as it appears in a certificate's SubjectPublicKeyInfo bit string (to
    /// check that the key and the certificate belong together).
    pub fn public_key(&self) -> &[u8] {
        match self {
            SigningKey::Rsa(k) => k.public().as_ref(),
            SigningKey::P256(k, _) | SigningKey::P384(k, _) => k.public_key().as_ref(),
            SigningKey::Ed25519(k) => k.public_key().as_ref(),
        }
    }

    /// AUTH method and data over `octets`: RFC 7427 when the peer announced a hash we can use
    /// (`rsa_pss` picks RSA-PSS over PKCS#1 v1.5 for an RSA key), else the RFC 7296 method of
    /// an ECDSA key. ring makes no SHA-1 signatures, so an RSA key needs a peer that announced
    /// SHA-2 (`NoCommonHash` otherwise); SHA-1 is only ever accepted from the peer.
    pub fn sign(
        &self,
        octets: &[u8],
        peer_hashes: &[u16],
        rsa_pss: bool,
    ) -> Result<(u8, Vec<u8>), AuthError> {
        let rng = SystemRandom::new();
        let has = |h: u16| peer_hashes.contains(&h);
        let digital = |alg: &[u8], s: &[u8]| -> Result<(u8, Vec<u8>), AuthError> {
            let len = u8::try_from(alg.len()).map_err(|_| AuthError::SignFailed)?;
            let mut v = Vec::with_capacity(alg.len().saturating_add(s.len()).saturating_add(1));
            v.push(len);
            v.extend_from_slice(alg);
            v.extend_from_slice(s);
            Ok((method::DIGITAL_SIGNATURE, v))
        };
        match self {
            SigningKey::Rsa(k) => {
                let mut out = vec![0u8; k.public().modulus_len()];
                let pick: Option<(&'static dyn sig::RsaEncoding, &[u8])> = if rsa_pss {
                    [
                        (hash::SHA2_256, &sig::RSA_PSS_SHA256, ALG_PSS_SHA256),
                        (hash::SHA2_384, &sig::RSA_PSS_SHA384, ALG_PSS_SHA384),
                        (hash::SHA2_512, &sig::RSA_PSS_SHA512, ALG_PSS_SHA512),
                    ]
                    .into_iter()
                    .find(|(h, ..)| has(*h))
                    .map(|(_, e, a)| (e as &'static dyn sig::RsaEncoding, a))
                } else {
                    [
                        (hash::SHA2_256, &sig::RSA_PKCS1_SHA256, ALG_RSA_SHA256),
                        (hash::SHA2_384, &sig::RSA_PKCS1_SHA384, ALG_RSA_SHA384),
                        (hash::SHA2_512, &sig::RSA_PKCS1_SHA512, ALG_RSA_SHA512),
                    ]
                    .into_iter()
                    .find(|(h, ..)| has(*h))
                    .map(|(_, e, a)| (e as &'static dyn sig::RsaEncoding, a))
                };
                match pick {
                    Some((enc, alg)) => {
                        k.sign(enc, &rng, octets, &mut out)
                            .map_err(|_| AuthError::SignFailed)?;
                        digital(alg, &out)
                    }
                    None => Err(AuthError::NoCommonHash),
                }
            }
            SigningKey::P256(asn1, fixed) | SigningKey::P384(asn1, fixed) => {
                let (h, alg, m) = if matches!(self, SigningKey::P256(..)) {
                    (hash::SHA2_256, ALG_ECDSA_SHA256, method::ECDSA_256)
                } else {
                    (hash::SHA2_384, ALG_ECDSA_SHA384, method::ECDSA_384)
                };
                if has(h) {
                    let s = asn1.sign(&rng, octets).map_err(|_| AuthError::SignFailed)?;
                    digital(alg, s.as_ref())
                } else {
                    let s = fixed
                        .sign(&rng, octets)
                        .map_err(|_| AuthError::SignFailed)?;
                    Ok((m, s.as_ref().to_vec()))
                }
            }
            SigningKey::Ed25519(k) => {
                if has(hash::IDENTITY) {
                    digital(ALG_ED25519, k.sign(octets).as_ref())
                } else {
                    Err(AuthError::NoCommonHash)
                }
            }
        }
    }
}

/// Checks the AUTH data of method `m` over `octets` against the public key in `spki` (of a
/// certificate already validated). `allow_sha1` admits method 1 and SHA-1 under method 14.
pub fn verify(
    spki: &SubjectPublicKeyInfo<'_>,
    m: u8,
    data: &[u8],
    octets: &[u8],
    allow_sha1: bool,
) -> Result<(), AuthError> {
    let kind = key_kind(spki)?;
    let key: &[u8] = &spki.subject_public_key.data;
    let (alg, signature): (&'static dyn sig::VerificationAlgorithm, &[u8]) = match m {
        method::RSA_SIG if kind == KeyKind::Rsa => {
            if !allow_sha1 {
                return Err(AuthError::Sha1NotAllowed);
            }
            (&sig::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY, data)
        }
        method::ECDSA_256 if kind == KeyKind::P256 => (&sig::ECDSA_P256_SHA256_FIXED, data),
        method::ECDSA_384 if kind == KeyKind::P384 => (&sig::ECDSA_P384_SHA384_FIXED, data),
        method::ECDSA_521 => return Err(AuthError::CurveNotAllowed),
        method::RSA_SIG | method::ECDSA_256 | method::ECDSA_384 => {
            return Err(AuthError::KeyMismatch)
        }
        method::DIGITAL_SIGNATURE => {
            let (&len, rest) = data.split_first().ok_or(AuthError::SignatureMalformed)?;
            let alg_der = rest
                .get(..usize::from(len))
                .ok_or(AuthError::SignatureMalformed)?;
            let signature = rest
                .get(usize::from(len)..)
                .ok_or(AuthError::SignatureMalformed)?;
            (digital_alg(alg_der, kind, allow_sha1)?, signature)
        }
        other => return Err(AuthError::Method(other)),
    };
    sig::UnparsedPublicKey::new(alg, key)
        .verify(octets, signature)
        .map_err(|_| AuthError::SignatureInvalid)
}

/// The ring algorithm an RFC 7427 AlgorithmIdentifier names for a key of `kind`.
fn digital_alg(
    der: &[u8],
    kind: KeyKind,
    allow_sha1: bool,
) -> Result<&'static dyn sig::VerificationAlgorithm, AuthError> {
    let (rest, alg) =
        AlgorithmIdentifier::from_der(der).map_err(|_| AuthError::SignatureMalformed)?;
    if !rest.is_empty() {
        return Err(AuthError::SignatureMalformed);
    }
    let oid = alg.algorithm.as_bytes();
    let chosen: Option<&'static dyn sig::VerificationAlgorithm> = match kind {
        KeyKind::Rsa if oid == OID_RSA_SHA1 => {
            if !allow_sha1 {
                return Err(AuthError::Sha1NotAllowed);
            }
            Some(&sig::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY)
        }
        KeyKind::Rsa if oid == OID_RSA_SHA256 => Some(&sig::RSA_PKCS1_2048_8192_SHA256),
        KeyKind::Rsa if oid == OID_RSA_SHA384 => Some(&sig::RSA_PKCS1_2048_8192_SHA384),
        KeyKind::Rsa if oid == OID_RSA_SHA512 => Some(&sig::RSA_PKCS1_2048_8192_SHA512),
        KeyKind::Rsa if oid == OID_RSA_PSS => Some(pss_alg(&alg)?),
        KeyKind::P256 if oid == OID_ECDSA_SHA256 => Some(&sig::ECDSA_P256_SHA256_ASN1),
        KeyKind::P256 if oid == OID_ECDSA_SHA384 => Some(&sig::ECDSA_P256_SHA384_ASN1),
        KeyKind::P384 if oid == OID_ECDSA_SHA256 => Some(&sig::ECDSA_P384_SHA256_ASN1),
        KeyKind::P384 if oid == OID_ECDSA_SHA384 => Some(&sig::ECDSA_P384_SHA384_ASN1),
        KeyKind::Ed25519 if oid == OID_ED25519 => Some(&sig::ED25519),
        _ => None,
    };
    match chosen {
        Some(a) => Ok(a),
        // A known algorithm for another key type.
        None if [
            OID_RSA_SHA1,
            OID_RSA_SHA256,
            OID_RSA_SHA384,
            OID_RSA_SHA512,
            OID_RSA_PSS,
            OID_ECDSA_SHA256,
            OID_ECDSA_SHA384,
            OID_ED25519,
        ]
        .contains(&oid) =>
        {
            Err(AuthError::KeyMismatch)
        }
        // ECDSA with SHA-512 (ring has none), or an algorithm unknown here.
        None => Err(AuthError::SignatureAlgorithm),
    }
}

/// RSASSA-PSS as ring verifies it: MGF1 with the same hash, salt as long as the hash.
fn pss_alg(
    alg: &AlgorithmIdentifier<'_>,
) -> Result<&'static dyn sig::VerificationAlgorithm, AuthError> {
    use x509_parser::signature_algorithm::SignatureAlgorithm;
    let Ok(SignatureAlgorithm::RSASSA_PSS(p)) = SignatureAlgorithm::try_from(alg) else {
        return Err(AuthError::SignatureMalformed);
    };
    let h = p.hash_algorithm_oid().as_bytes();
    let mgf = p
        .mask_gen_algorithm()
        .map_err(|_| AuthError::SignatureMalformed)?;
    if mgf.mgf.as_bytes() != OID_MGF1 || mgf.hash.as_bytes() != h || p.trailer_field() != 1 {
        return Err(AuthError::SignatureAlgorithm);
    }
    let (want_salt, a): (u32, &'static dyn sig::VerificationAlgorithm) = if h == OID_SHA256 {
        (32, &sig::RSA_PSS_2048_8192_SHA256)
    } else if h == OID_SHA384 {
        (48, &sig::RSA_PSS_2048_8192_SHA384)
    } else if h == OID_SHA512 {
        (64, &sig::RSA_PSS_2048_8192_SHA512)
    } else {
        return Err(AuthError::SignatureAlgorithm);
    };
    if p.salt_length() != want_salt {
        return Err(AuthError::SignatureAlgorithm);
    }
    Ok(a)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hashes_round_trip_and_sha1_only_when_allowed() {
        let h = announced_hashes(false);
        assert!(!h.contains(&hash::SHA1));
        assert_eq!(decode_hashes(&encode_hashes(&h)), h);
        assert!(announced_hashes(true).contains(&hash::SHA1));
        assert_eq!(decode_hashes(&[0, 2, 0]), vec![2]);
    }

    #[test]
    fn algorithm_identifiers_parse_as_der() {
        for a in [
            ALG_RSA_SHA256,
            ALG_PSS_SHA256,
            ALG_PSS_SHA384,
            ALG_PSS_SHA512,
            ALG_ECDSA_SHA256,
            ALG_ED25519,
        ] {
            let (rest, _) = AlgorithmIdentifier::from_der(a).unwrap();
            assert!(rest.is_empty());
        }
        assert!(pss_alg(&AlgorithmIdentifier::from_der(ALG_PSS_SHA384).unwrap().1).is_ok());
    }
}
