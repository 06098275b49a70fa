//! Authentication of IKE_AUTH (RFC 7296 2.15): the exchanges ask an [`Authenticator`] for our
//! AUTH payload, to check the peer's, and for any payloads it wants carried with them
//! (certificates and requests for them, say); they never look at a credential themselves.
//! [`PskAuthenticator`] does pre-shared keys (AUTH method 2, Shared Key Message Integrity
//! Code) from each connection's [`Credential`].
//!
//! Owns: the AUTH computation and check, and the credentials' meaning.
//! Must never: compare MACs in time that depends on their content; print a credential.

use crate::config::{Credential, PeerConfig};
use crate::crypto::Prf;
use crate::wire::{Id, Payload};

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

/// Why authentication failed (the exchange answers or reports AUTHENTICATION_FAILED).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the connection has no credential for this method")]
    NoCredential,
    #[error("AUTH method {0} is not supported")]
    Method(u8),
    #[error("the peer's AUTH does not verify")]
    Mismatch,
}

/// Proves our identity and checks the peer's.
pub trait Authenticator: Send {
    /// Payloads to carry in our IKE_AUTH message next to IDi/IDr (e.g. CERT, CERTREQ).
    fn extra_payloads(&mut self, _peer: &PeerConfig) -> Vec<Payload> {
        Vec::new()
    }

    /// Our AUTH payload over `input`.
    fn sign(&mut self, peer: &PeerConfig, input: &AuthInput<'_>) -> Result<Auth, AuthError>;

    /// Checks the peer's AUTH over `input`; `message` is the peer's whole IKE_AUTH message
    /// (for payloads such as CERT).
    fn verify(
        &mut self,
        peer: &PeerConfig,
        input: &AuthInput<'_>,
        auth: &Auth,
        message: &[Payload],
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
        }
    }
}

impl Authenticator for PskAuthenticator {
    fn sign(&mut self, peer: &PeerConfig, input: &AuthInput<'_>) -> Result<Auth, AuthError> {
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
        let auth = a.sign(&peer(b"k1"), &input).unwrap();
        assert_eq!(auth.method, METHOD_PSK);
        assert_eq!(a.verify(&peer(b"k1"), &input, &auth, &[]), Ok(()));
        assert_eq!(
            a.verify(&peer(b"k2"), &input, &auth, &[]),
            Err(AuthError::Mismatch)
        );
        let other = Auth {
            method: 1,
            ..auth.clone()
        };
        assert_eq!(
            a.verify(&peer(b"k1"), &input, &other, &[]),
            Err(AuthError::Method(1))
        );
        assert!(!format!("{auth:?}").contains(&format!("{:?}", auth.data)));
        assert_eq!(input.signed_octets().len(), 4 + 32 + 32);
    }
}
