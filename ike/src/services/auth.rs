//! Authentication of IKE_AUTH (RFC 7296 2.15): the exchanges ask an [`Authenticator`] for our
//! AUTH payload, to check the peer's, and for any payloads it wants carried with them
//! (certificates and requests for them, say); they never look at a credential themselves.
//! [`PskAuthenticator`] does pre-shared keys (AUTH method 2, Shared Key Message Integrity
//! Code) from each connection's [`Credential`]; [`CredentialAuthenticator`] (the endpoint's
//! default) does those and certificates: SIGNATURE_HASH_ALGORITHMS and CERTREQ in
//! IKE_SA_INIT, CERT and CERTREQ in IKE_AUTH, signatures (`pubkey`), path validation and
//! identities (`certs`).
//!
//! Owns: the AUTH computation and check, and the credentials' meaning.
//! Must never: compare MACs in time that depends on their content; print a credential.

use rustls_pki_types::CertificateDer;

use super::{certs, pubkey};
use crate::config::{Credential, PeerConfig, Pubkey};
use crate::crypto::Prf;
use crate::wire::{cert_encoding, notify, Id, Payload};

/// AUTH method: Shared Key Message Integrity Code (RFC 7296 3.8).
pub const METHOD_PSK: u8 = 2;

/// What an AUTH payload vouches for (RFC 7296 2.15): the signer's IKE_SA_INIT message, the
/// other side's nonce and the signer's identity under the signer's SK_p.
pub struct AuthInput<'a> {
    pub prf: Prf,
    /// The IKE_SA_INIT message the signer sent.
    pub message: &'a [u8],
    /// The nonce of the other side.
    pub nonce: &'a [u8],
    /// SK_pi for the initiator's AUTH, SK_pr for the responder's.
    pub sk_p: &'a [u8],
    /// The signer's identity.
    pub id: &'a Id,
}

impl AuthInput<'_> {
    /// prf(SK_p, ID body): the last part of the signed octets.
    pub fn maced_id(&self) -> Vec<u8> {
        self.prf.prf(self.sk_p, &[&self.id.body()]).to_vec()
    }

    /// The whole signed octets (for signature methods): message | nonce | prf(SK_p, IDbody).
    pub fn signed_octets(&self) -> Vec<u8> {
        let mut v = self.message.to_vec();
        v.extend_from_slice(self.nonce);
        v.extend_from_slice(&self.maced_id());
        v
    }
}

/// An AUTH payload's content.
#[derive(Clone, PartialEq, Eq)]
pub struct Auth {
    pub method: u8,
    pub data: Vec<u8>,
}

impl core::fmt::Debug for Auth {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Auth(method {}, {} bytes)", self.method, self.data.len())
    }
}

/// Why authentication failed: each a counted reason ([`AuthError::name`]); the exchange
/// answers (or reports) AUTHENTICATION_FAILED whatever the reason (RFC 7296 2.21.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
pub enum AuthError {
    #[error("the connection has no credential for this method")]
    NoCredential,
    #[error("AUTH method {0} is not supported")]
    Method(u8),
    #[error("the peer's AUTH does not verify")]
    Mismatch,
    #[error("the peer sent no certificate")]
    NoCertificate,
    #[error("the peer's certificate does not parse")]
    CertMalformed,
    #[error("the peer's certificate does not chain to a configured CA")]
    UnknownCa,
    #[error("a certificate of the peer's chain has expired")]
    Expired,
    #[error("a certificate of the peer's chain is not valid yet")]
    NotYetValid,
    #[error("a certificate of the peer's chain is revoked")]
    Revoked,
    #[error("the peer's certificate lacks the required extended key usage")]
    MissingEku,
    #[error("a signature in the peer's certificate chain does not verify")]
    ChainSignatureInvalid,
    #[error("the peer's certificate chain is invalid")]
    ChainInvalid,
    #[error("the peer's certificate has no subjectAltName of its identity's type")]
    SanType,
    #[error("no subjectAltName of the peer's certificate matches its identity")]
    SanMismatch,
    #[error("the peer's DN identity is not its certificate's subject")]
    SubjectMismatch,
    #[error("the peer's identity type cannot be matched against a certificate")]
    IdType,
    #[error("the peer's key is on a curve we do not accept")]
    CurveNotAllowed,
    #[error("the peer's key type is not RSA, ECDSA or Ed25519")]
    KeyType,
    #[error("the AUTH method does not fit the peer's key")]
    KeyMismatch,
    #[error("SHA-1 signatures are not allowed on this connection")]
    Sha1NotAllowed,
    #[error("the signature algorithm is not one we accept")]
    SignatureAlgorithm,
    #[error("the AUTH signature data is malformed")]
    SignatureMalformed,
    #[error("the AUTH signature does not verify")]
    SignatureInvalid,
    #[error("the peer announced no hash our key can sign with")]
    NoCommonHash,
    #[error("our signature could not be made")]
    SignFailed,
    #[error("the connection authenticates its peers by EAP, the peer sent AUTH")]
    EapRequired,
    #[error("EAP: the user is unknown")]
    EapUnknownUser,
    #[error("EAP: wrong password")]
    EapWrongPassword,
    #[error("EAP: the peer refused the method (Nak)")]
    EapMethodRefused,
    #[error("EAP: a malformed or unexpected EAP message")]
    EapMalformed,
    #[error("EAP: the RADIUS server rejected the user")]
    EapRadiusReject,
    #[error("EAP: the RADIUS server did not answer")]
    EapRadiusTimeout,
    #[error("EAP: the method succeeded without an MSK")]
    EapNoMsk,
    #[error("EAP: the peer's AUTH from the MSK does not verify")]
    EapAuthMismatch,
}

impl AuthError {
    /// Every reason, for counters and views.
    pub const ALL: [AuthError; 34] = [
        AuthError::NoCredential,
        AuthError::Method(0),
        AuthError::Mismatch,
        AuthError::NoCertificate,
        AuthError::CertMalformed,
        AuthError::UnknownCa,
        AuthError::Expired,
        AuthError::NotYetValid,
        AuthError::Revoked,
        AuthError::MissingEku,
        AuthError::ChainSignatureInvalid,
        AuthError::ChainInvalid,
        AuthError::SanType,
        AuthError::SanMismatch,
        AuthError::SubjectMismatch,
        AuthError::IdType,
        AuthError::CurveNotAllowed,
        AuthError::KeyType,
        AuthError::KeyMismatch,
        AuthError::Sha1NotAllowed,
        AuthError::SignatureAlgorithm,
        AuthError::SignatureMalformed,
        AuthError::SignatureInvalid,
        AuthError::NoCommonHash,
        AuthError::SignFailed,
        AuthError::EapRequired,
        AuthError::EapUnknownUser,
        AuthError::EapWrongPassword,
        AuthError::EapMethodRefused,
        AuthError::EapMalformed,
        AuthError::EapRadiusReject,
        AuthError::EapRadiusTimeout,
        AuthError::EapNoMsk,
        AuthError::EapAuthMismatch,
    ];

    /// The counter's name (`auth_` and the reason).
    pub fn name(self) -> &'static str {
        match self {
            AuthError::NoCredential => "auth_no_credential",
            AuthError::Method(_) => "auth_method_unsupported",
            AuthError::Mismatch => "auth_psk_mismatch",
            AuthError::NoCertificate => "auth_no_certificate",
            AuthError::CertMalformed => "auth_cert_malformed",
            AuthError::UnknownCa => "auth_unknown_ca",
            AuthError::Expired => "auth_cert_expired",
            AuthError::NotYetValid => "auth_cert_not_yet_valid",
            AuthError::Revoked => "auth_cert_revoked",
            AuthError::MissingEku => "auth_missing_eku",
            AuthError::ChainSignatureInvalid => "auth_chain_signature_invalid",
            AuthError::ChainInvalid => "auth_chain_invalid",
            AuthError::SanType => "auth_san_type",
            AuthError::SanMismatch => "auth_san_mismatch",
            AuthError::SubjectMismatch => "auth_subject_mismatch",
            AuthError::IdType => "auth_id_type",
            AuthError::CurveNotAllowed => "auth_curve_not_allowed",
            AuthError::KeyType => "auth_key_type",
            AuthError::KeyMismatch => "auth_key_mismatch",
            AuthError::Sha1NotAllowed => "auth_sha1_not_allowed",
            AuthError::SignatureAlgorithm => "auth_signature_algorithm",
            AuthError::SignatureMalformed => "auth_signature_malformed",
            AuthError::SignatureInvalid => "auth_signature_invalid",
            AuthError::NoCommonHash => "auth_no_common_hash",
            AuthError::SignFailed => "auth_sign_failed",
            AuthError::EapRequired => "auth_eap_required",
            AuthError::EapUnknownUser => "auth_eap_unknown_user",
            AuthError::EapWrongPassword => "auth_eap_wrong_password",
            AuthError::EapMethodRefused => "auth_eap_method_refused",
            AuthError::EapMalformed => "auth_eap_malformed",
            AuthError::EapRadiusReject => "auth_eap_radius_reject",
            AuthError::EapRadiusTimeout => "auth_eap_radius_timeout",
            AuthError::EapNoMsk => "auth_eap_no_msk",
            AuthError::EapAuthMismatch => "auth_eap_auth_mismatch",
        }
    }
}

/// What the exchange knows besides the signed octets: the time for certificate validity, and
/// what the peer said in IKE_SA_INIT (and, to a responder, in its IKE_AUTH request).
#[derive(Clone, Copy, Debug, Default)]
pub struct AuthContext<'a> {
    /// Seconds since the UNIX epoch (the caller's time, `EndpointConfig::unix_time_at_zero`).
    pub unix_time: u64,
    /// The hashes of the peer's SIGNATURE_HASH_ALGORITHMS (RFC 7427 4), empty if it sent none.
    pub peer_hashes: &'a [u16],
    /// The data of each CERTREQ the peer sent (SHA-1 SPKI hashes of its CAs).
    pub certreqs: &'a [Vec<u8>],
}

/// Proves our identity and checks the peer's.
pub trait Authenticator: Send {
    /// Payloads for our IKE_SA_INIT message (SIGNATURE_HASH_ALGORITHMS; a responder's CERTREQ)
    /// given the connections it may be for.
    fn init_payloads(&mut self, _peers: &[&PeerConfig], _responder: bool) -> Vec<Payload> {
        Vec::new()
    }

    /// Payloads to carry in our IKE_AUTH message next to IDi/IDr (e.g. CERT, CERTREQ).
    fn extra_payloads(&mut self, _peer: &PeerConfig, _ctx: &AuthContext<'_>) -> Vec<Payload> {
        Vec::new()
    }

    /// Our AUTH payload over `input`.
    fn sign(
        &mut self,
        peer: &PeerConfig,
        input: &AuthInput<'_>,
        ctx: &AuthContext<'_>,
    ) -> Result<Auth, AuthError>;

    /// Checks the peer's AUTH over `input`; `message` is the peer's whole IKE_AUTH message
    /// (for payloads such as CERT).
    fn verify(
        &mut self,
        peer: &PeerConfig,
        input: &AuthInput<'_>,
        auth: &Auth,
        message: &[Payload],
        ctx: &AuthContext<'_>,
    ) -> Result<(), AuthError>;
}

/// Pre-shared keys: AUTH = prf(prf(PSK, "Key Pad for IKEv2"), signed octets).
#[derive(Clone, Copy, Debug, Default)]
pub struct PskAuthenticator;

impl PskAuthenticator {
    fn mac(peer: &PeerConfig, input: &AuthInput<'_>) -> Result<Vec<u8>, AuthError> {
        match &peer.auth {
            Credential::Psk(psk) => Ok(crate::crypto::psk_auth(
                input.prf,
                psk,
                input.message,
                input.nonce,
                input.sk_p,
                &input.id.body(),
            )
            .to_vec()),
            Credential::Pubkey(_) => Err(AuthError::NoCredential),
        }
    }
}

impl Authenticator for PskAuthenticator {
    fn sign(
        &mut self,
        peer: &PeerConfig,
        input: &AuthInput<'_>,
        _ctx: &AuthContext<'_>,
    ) -> Result<Auth, AuthError> {
        Ok(Auth {
            method: METHOD_PSK,
            data: Self::mac(peer, input)?,
        })
    }

    fn verify(
        &mut self,
        peer: &PeerConfig,
        input: &AuthInput<'_>,
        auth: &Auth,
        _message: &[Payload],
        _ctx: &AuthContext<'_>,
    ) -> Result<(), AuthError> {
        if auth.method != METHOD_PSK {
            return Err(AuthError::Method(auth.method));
        }
        if ct_eq(&Self::mac(peer, input)?, &auth.data) {
            Ok(())
        } else {
            Err(AuthError::Mismatch)
        }
    }
}

/// Each connection's own credential: pre-shared keys as [`PskAuthenticator`], certificates
/// (RFC 7296 signatures, RFC 7427) with the connection's [`Pubkey`].
#[derive(Clone, Copy, Debug, Default)]
pub struct CredentialAuthenticator;

impl Authenticator for CredentialAuthenticator {
    fn init_payloads(&mut self, peers: &[&PeerConfig], responder: bool) -> Vec<Payload> {
        let pubkeys: Vec<&Pubkey> = peers
            .iter()
            .filter_map(|p| match &p.auth {
                Credential::Pubkey(k) => Some(k.as_ref()),
                Credential::Psk(_) => None,
            })
            .collect();
        if pubkeys.is_empty() {
            return Vec::new();
        }
        let sha1 = pubkeys.iter().any(|k| k.allow_sha1);
        let mut v = vec![Payload::notify(
            notify::SIGNATURE_HASH_ALGORITHMS,
            pubkey::encode_hashes(&pubkey::announced_hashes(sha1)),
        )];
        if responder {
            v.extend(certreq(&pubkeys));
        }
        v
    }

    fn extra_payloads(&mut self, peer: &PeerConfig, ctx: &AuthContext<'_>) -> Vec<Payload> {
        let Credential::Pubkey(k) = &peer.auth else {
            return Vec::new();
        };
        let mut v = Vec::new();
        let asked = !ctx.certreqs.is_empty();
        if let Some(local) = k.local.as_ref().filter(|_| asked || !k.cert_only_if_asked) {
            // The end entity always; the intermediates too unless every CERTREQ names a CA
            // of ours the peer holds already (an intermediate it has).
            let named = ctx
                .certreqs
                .iter()
                .all(|r| !r.is_empty() && local.chain_named_by(r));
            let send = if asked && named { 1 } else { local.chain.len() };
            v.extend(local.chain.iter().take(send).map(|c| Payload::Cert {
                encoding: cert_encoding::X509_SIGNATURE,
                data: c.as_ref().to_vec(),
            }));
        }
        v.extend(certreq(&[k.as_ref()]));
        v
    }

    fn sign(
        &mut self,
        peer: &PeerConfig,
        input: &AuthInput<'_>,
        ctx: &AuthContext<'_>,
    ) -> Result<Auth, AuthError> {
        match &peer.auth {
            Credential::Psk(_) => PskAuthenticator.sign(peer, input, ctx),
            Credential::Pubkey(k) => {
                let local = k.local.as_ref().ok_or(AuthError::NoCredential)?;
                let (method, data) =
                    local
                        .key
                        .sign(&input.signed_octets(), ctx.peer_hashes, k.rsa_pss)?;
                Ok(Auth { method, data })
            }
        }
    }

    fn verify(
        &mut self,
        peer: &PeerConfig,
        input: &AuthInput<'_>,
        auth: &Auth,
        message: &[Payload],
        ctx: &AuthContext<'_>,
    ) -> Result<(), AuthError> {
        let k = match &peer.auth {
            Credential::Psk(_) => return PskAuthenticator.verify(peer, input, auth, message, ctx),
            Credential::Pubkey(k) => k,
        };
        if auth.method == METHOD_PSK {
            return Err(AuthError::Method(auth.method));
        }
        let certs: Vec<CertificateDer<'_>> = message
            .iter()
            .filter_map(|p| match p {
                Payload::Cert {
                    encoding: cert_encoding::X509_SIGNATURE,
                    data,
                } => Some(CertificateDer::from(data.as_slice())),
                _ => None,
            })
            .collect();
        let octets = input.signed_octets();
        certs::validate_peer(
            &k.trust,
            &certs,
            ctx.unix_time,
            k.peer_eku,
            input.id,
            |spki| pubkey::verify(spki, auth.method, &auth.data, &octets, k.allow_sha1),
        )
    }
}

/// One CERTREQ naming the CAs of these connections, if they have any.
fn certreq(pubkeys: &[&Pubkey]) -> Option<Payload> {
    let mut data = Vec::new();
    for k in pubkeys {
        for h in k.trust.certreq_data().chunks_exact(20) {
            if !data.chunks_exact(20).any(|x: &[u8]| x == h) {
                data.extend_from_slice(h);
            }
        }
    }
    (!data.is_empty()).then_some(Payload::CertReq {
        encoding: cert_encoding::X509_SIGNATURE,
        data,
    })
}

/// Compares two MACs in time that depends only on their lengths.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::secret;
    use crate::crypto::{DhGroup, Prf};
    use crate::proposal::IkeProposal;

    fn peer(psk: &[u8]) -> PeerConfig {
        PeerConfig {
            name: "p".into(),
            local_id: Id::from_text("a.test"),
            remote_id: None,
            auth: Credential::Psk(secret(psk)),
            ike_proposals: vec![IkeProposal {
                encr_bits: 128,
                prf: Prf::HmacSha256,
                dh: DhGroup::X25519,
                cbc: false,
            }],
            esp_proposals: vec![],
            local_ts: vec![],
            remote_ts: vec![],
            pool: None,
            request_vip: false,
            child_rekey: None,
            ike_rekey: None,
            child_life: None,
            dpd: None,
        }
    }

    #[test]
    fn psk_signs_what_the_other_end_verifies_and_nothing_else() {
        let id = Id::from_text("a.test");
        let input = AuthInput {
            prf: Prf::HmacSha256,
            message: b"init",
            nonce: &[7; 32],
            sk_p: &[9; 32],
            id: &id,
        };
        let mut a = PskAuthenticator;
        let c = AuthContext::default();
        let auth = a.sign(&peer(b"k1"), &input, &c).unwrap();
        assert_eq!(auth.method, METHOD_PSK);
        assert_eq!(a.verify(&peer(b"k1"), &input, &auth, &[], &c), Ok(()));
        assert_eq!(
            a.verify(&peer(b"k2"), &input, &auth, &[], &c),
            Err(AuthError::Mismatch)
        );
        let other = Auth {
            method: 1,
            ..auth.clone()
        };
        assert_eq!(
            a.verify(&peer(b"k1"), &input, &other, &[], &c),
            Err(AuthError::Method(1))
        );
        assert!(!format!("{auth:?}").contains(&format!("{:?}", auth.data)));
        assert_eq!(input.signed_octets().len(), 4 + 32 + 32);
    }
}
