//! What the endpoint is told: its connections ([`PeerConfig`]) and its own policy
//! ([`EndpointConfig`]: retransmission, half-open expiry, the rate of unprotected answers, and
//! [`Admission`]: cookies and caps on half-open IKE SAs against IKE_SA_INIT floods).
//!
//! Owns: plain configuration data, already validated by whoever built it (the control plane's
//! config loader names the file and key of a bad value).
//! Must never: print a credential (`Debug` redacts it); read a file or a clock.

use core::net::Ipv4Addr;
use core::time::Duration;
use std::sync::Arc;

use zeroize::Zeroizing;

use crate::crypto::Secret;
use crate::proposal::{EspProposal, IkeProposal};
use crate::wire::{Id, TrafficSelector};

/// How a connection proves who it is and checks the peer; the endpoint's authenticator
/// (`services::Authenticator`) interprets it.
#[derive(Clone)]
pub enum Credential {
    /// A pre-shared key, the same on both ends (RFC 7296 2.15).
    Psk(Secret),
    /// X.509 certificates: our chain and key, the CAs (and CRLs) the peer's must chain to.
    Pubkey(Arc<Pubkey>),
}

impl core::fmt::Debug for Credential {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Credential::Psk(_) => write!(f, "Psk(<secret>)"),
            Credential::Pubkey(p) => write!(f, "Pubkey({p:?})"),
        }
    }
}

/// Certificate authentication of one connection (RFC 7296 2.15 signatures, RFC 7427).
#[derive(Debug)]
pub struct Pubkey {
    /// Our certificate chain and private key; none when we log in by EAP (a client whose
    /// connection only checks the gateway's certificate).
    pub local: Option<crate::services::LocalCert>,
    /// What the peer's certificate must chain to.
    pub trust: crate::services::TrustStore,
    /// The extended key usage the peer's certificate must allow.
    pub peer_eku: crate::services::PeerEku,
    /// Sign RSA as RSASSA-PSS (else PKCS#1 v1.5) under RFC 7427.
    pub rsa_pss: bool,
    /// Accept and make SHA-1 RSA signatures (AUTH method 1, or SHA-1 under method 14).
    pub allow_sha1: bool,
    /// Send our certificate only when the peer asked with a CERTREQ (iOS/macOS never ask
    /// without a profile, so the default is always).
    pub cert_only_if_asked: bool,
}

/// A range of virtual IPv4 addresses handed to road-warrior clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    pub first: Ipv4Addr,
    pub count: u32,
}

/// One connection (peer) as configured.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    pub name: String,
    pub local_id: Id,
    /// The peer's identity; `None` accepts any (a responder for many road warriors).
    pub remote_id: Option<Id>,
    pub auth: Credential,
    pub ike_proposals: Vec<IkeProposal>,
    pub esp_proposals: Vec<EspProposal>,
    /// Our side's selectors; for a client asking for a virtual IP, the address it gets.
    pub local_ts: Vec<TrafficSelector>,
    /// The peer's side; for a responder with a pool, the virtual IP it hands out.
    pub remote_ts: Vec<TrafficSelector>,
    pub pool: Option<Pool>,
    /// Initiator: ask for a virtual IP (CP request).
    pub request_vip: bool,
    /// Rekey each CHILD_SA / the IKE SA this long after it came up (`None`: never).
    pub child_rekey: Option<Duration>,
    pub ike_rekey: Option<Duration>,
    /// Delete a CHILD_SA that reaches this age without being replaced (its hard lifetime by
    /// time; `None`: never).
    pub child_life: Option<Duration>,
    /// Check liveness when nothing arrived for this long (`None`: never).
    pub dpd: Option<Duration>,
}

/// Retransmission of our requests (strongSwan's defaults: 4 s, x1.8, 5 retransmits).
#[derive(Clone, Copy, Debug)]
pub struct Retransmit {
    pub timeout: Duration,
    /// Each retransmission waits this many thousandths of the previous wait.
    pub base_milli: u32,
    pub tries: u32,
}

impl Default for Retransmit {
    fn default() -> Self {
        Retransmit {
            timeout: Duration::from_secs(4),
            base_milli: 1800,
            tries: 5,
        }
    }
}

impl Retransmit {
    /// The wait after the `tries`-th retransmission: `timeout * (base/1000)^tries`.
    pub fn wait(&self, tries: u32) -> Duration {
        let mut t = self.timeout;
        for _ in 0..tries {
            t = t
                .checked_mul(self.base_milli)
                .and_then(|x| x.checked_div(1000))
                .unwrap_or(Duration::MAX);
        }
        t
    }
}

/// The endpoint's configuration.
#[derive(Clone, Debug)]
pub struct EndpointConfig {
    pub peers: Vec<PeerConfig>,
    pub retransmit: Retransmit,
    /// A responder's IKE SA that is not authenticated this long after its IKE_SA_INIT goes.
    pub half_open_timeout: Duration,
    /// A CHILD_SA rekey the peer refused (e.g. TEMPORARY_FAILURE) is tried again this later.
    pub rekey_retry: Duration,
    /// At most this many unprotected error answers (INVALID_SYNTAX, INVALID_IKE_SPI, ...) per
    /// second, with a burst of as many (RFC 7296 2.21.4: limit the answers to unprotected
    /// messages).
    pub unprotected_answers_per_sec: u32,
    pub admission: Admission,
    /// IKE fragmentation (RFC 7383).
    pub fragmentation: Fragmentation,
    /// The UNIX time at the caller's `Instant::ZERO`: certificate and CRL validity are
    /// judged at this plus the `now` the caller passes in (the core reads no clock).
    pub unix_time_at_zero: Duration,
    /// RFC 6311 message-id synchronization: announce IKEV2_MESSAGE_ID_SYNC_SUPPORTED in
    /// IKE_AUTH; once both ends announced it, answer the peer's IKEV2_MESSAGE_ID_SYNC, and
    /// [`Endpoint::sync_message_ids`](crate::Endpoint::sync_message_ids) may ask the peer
    /// (an HA node that took the IKE SA over).
    pub mid_sync: bool,
    /// RFC 9611 per-core CHILD_SAs: how many CHILD_SAs with the same selectors this end keeps
    /// under one IKE SA, one per worker of the data plane (0 or 1: off, SA_RESOURCE_INFO is
    /// neither sent nor answered). With more, SA_RESOURCE_INFO goes out in IKE_AUTH; once
    /// both ends sent it, [`Endpoint::create_child_on`](crate::Endpoint::create_child_on)
    /// adds one per worker, the peer's further ones are taken up to this many (TS_MAX_QUEUE
    /// beyond) and each lands on a worker of this IKE SA that has none yet. A connection that
    /// asks for a virtual IP (`request_vip`) does not offer them (its masquerade to the
    /// virtual IP keeps per-worker sessions: an answer must return to the sealing worker).
    pub per_core_sas: u16,
    /// The liveness check a hint starts (an unprotected INVALID_SPI or INVALID_IKE_SPI that
    /// names one of our IKE SAs, RFC 7296 1.5, 2.21.4: `exchange::hint`): sent at once, then
    /// again after each wait of this schedule; when it runs out with no authenticated answer
    /// and the peer answered it INVALID_IKE_SPI, the IKE SA is down
    /// ([`DownReason::PeerLostState`](crate::DownReason::PeerLostState)).
    pub hint_probe: Retransmit,
    /// At most one hinted check per IKE SA in this long (RFC 7296 2.21.4: limit such tests).
    pub hint_holdoff: Duration,
    /// At most one INVALID_SPI notification per IKE SA in this long (RFC 7296 2.21.4: ESP
    /// for an SPI we do not have from a peer we share an IKE SA with is told inside it;
    /// "implementations SHOULD limit the frequency" of such answers).
    pub invalid_spi_interval: Duration,
}

/// The default [`EndpointConfig::hint_probe`]: three sends 1 s apart, a verdict 1 s after
/// the last.
pub const HINT_PROBE: Retransmit = Retransmit {
    timeout: Duration::from_secs(1),
    base_milli: 1000,
    tries: 2,
};

/// Which IKE_SA_INIT requests a responder takes on (RFC 7296 2.6, RFC 8019): with this many
/// half-open IKE SAs or more it answers a request without a valid COOKIE with one (stateless,
/// no Diffie-Hellman); past the caps it drops the request, counted (RFC 7296 defines no
/// answer for "too busy", and any answer to a spoofed source is reflection). Half-open IKE
/// SAs go after [`EndpointConfig::half_open_timeout`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admission {
    /// Demand a cookie once this many IKE SAs are half-open (0: always).
    pub cookie_threshold: u32,
    /// Half-open IKE SAs at most, in total.
    pub half_open_max: u32,
    /// Half-open IKE SAs at most from one source (an IPv4 address, an IPv6 /64).
    pub half_open_per_source: u32,
    /// The cookie secret is replaced this often.
    pub cookie_secret_lifetime: Duration,
    /// Cookies of the replaced secret are still accepted this long after its replacement.
    pub cookie_grace: Duration,
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            cookie_threshold: 64,
            half_open_max: 5000,
            half_open_per_source: 16,
            cookie_secret_lifetime: Duration::from_secs(120),
            cookie_grace: Duration::from_secs(10),
        }
    }
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            peers: Vec::new(),
            retransmit: Retransmit::default(),
            half_open_timeout: Duration::from_secs(30),
            rekey_retry: Duration::from_secs(10),
            unprotected_answers_per_sec: 20,
            admission: Admission::default(),
            fragmentation: Fragmentation::default(),
            unix_time_at_zero: Duration::ZERO,
            mid_sync: false,
            per_core_sas: 0,
            hint_probe: HINT_PROBE,
            hint_holdoff: Duration::from_secs(10),
            invalid_spi_interval: Duration::from_secs(1),
        }
    }
}

/// IKE fragmentation (RFC 7383): offered and accepted in IKE_SA_INIT when `enabled` (as
/// strongSwan's `fragmentation = yes`); once both ends announced it, a protected message
/// whose IP datagram would exceed the fragment size for the peer's address family goes as
/// Encrypted Fragment payloads, and fragments the peer sends are reassembled within the
/// bounds below (what is beyond them is dropped, counted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fragmentation {
    pub enabled: bool,
    /// The largest IP datagram a fragment may make, IPv4 and IPv6 (RFC 7383 2.5.1
    /// recommends 576 and 1280 without path MTU discovery). IP and UDP headers and the
    /// non-ESP marker on port 4500 count.
    pub size_v4: u16,
    pub size_v6: u16,
    /// A reassembled message may be at most this long (its decrypted payloads).
    pub max_message: usize,
    /// A message may come in at most this many fragments.
    pub max_fragments: u16,
    /// Bytes held for reassembly by all IKE SAs together.
    pub max_total: usize,
    /// A message whose fragments did not all come this long after its first is dropped.
    pub timeout: Duration,
}

/// The smallest fragment size accepted: below it a fragment carries too little.
pub const MIN_FRAGMENT_SIZE: u16 = 200;

impl Default for Fragmentation {
    fn default() -> Self {
        Fragmentation {
            enabled: true,
            size_v4: 576,
            size_v6: 1280,
            max_message: 64 * 1024,
            max_fragments: 256,
            max_total: 4 * 1024 * 1024,
            timeout: Duration::from_secs(30),
        }
    }
}

/// A new, zeroizing secret from bytes (for configuration).
pub fn secret(b: &[u8]) -> Secret {
    Zeroizing::new(b.to_vec())
}

/// A lifetime in whole seconds as configuration files write it (0: none).
pub fn after_secs(secs: u64) -> Option<Duration> {
    (secs > 0).then(|| Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retransmit_waits_grow_and_saturate() {
        let r = Retransmit::default();
        assert_eq!(r.wait(0), Duration::from_secs(4));
        assert_eq!(r.wait(1), Duration::from_millis(7200));
        assert_eq!(r.wait(2), Duration::from_millis(12960));
        let huge = Retransmit {
            timeout: Duration::MAX,
            base_milli: 2000,
            tries: 1,
        };
        assert_eq!(huge.wait(3), Duration::MAX);
        assert_eq!(after_secs(0), None);
        assert_eq!(after_secs(3), Some(Duration::from_secs(3)));
    }

    #[test]
    fn credentials_never_print() {
        let c = Credential::Psk(secret(b"hunter2"));
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
