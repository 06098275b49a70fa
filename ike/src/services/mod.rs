//! What the exchanges ask of the world around one IKE SA, behind small interfaces:
//! SPIs ([`SpiAllocator`]), virtual IPs ([`AddressPool`]) and proving and checking identities
//! ([`Authenticator`]). An endpoint gets them at construction ([`Services::default`]: random
//! SPIs, one local pool table, each connection's credential: pre-shared keys or certificates).
//!
//! Owns: the service interfaces and their default implementations.
//! Must never: reach the network or a clock, or keep a credential where `Debug` prints it.

pub mod auth;
pub mod certs;
pub mod pool;
pub mod pubkey;
pub mod spi;

pub use auth::{
    Auth, AuthContext, AuthError, AuthInput, Authenticator, CredentialAuthenticator,
    PskAuthenticator,
};
pub use certs::{LocalCert, PeerEku, TrustStore};
pub use pool::{AddressPool, LocalPool};
pub use pubkey::SigningKey;
pub use spi::{SpiAllocator, SpiLayout, SpiLayoutError};

/// The services of one endpoint.
pub struct Services {
    pub spis: SpiAllocator,
    pub pool: Box<dyn AddressPool>,
    pub auth: Box<dyn Authenticator>,
    /// EAP for the peers of some connections (RFC 7296 2.16), if configured.
    pub eap: Option<crate::eap::EapService>,
}

impl Default for Services {
    fn default() -> Self {
        Services {
            spis: SpiAllocator::default(),
            pool: Box::new(LocalPool::default()),
            auth: Box::new(CredentialAuthenticator),
            eap: None,
        }
    }
}

impl core::fmt::Debug for Services {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Services")
            .field("spis", &self.spis)
            .finish_non_exhaustive()
    }
}
