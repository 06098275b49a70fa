//! SA records as the fast path sees them: hot per-direction runtime records, and the
//! parameters the control plane sends to build them.
//!
//! A worker owns its records outright (no locks, no atomics besides its own counters). The
//! hot fields come first and the records are cache-line aligned with their size asserted at
//! compile time, after VPP's `ipsec_sa.h`; names, lifetimes and selectors of the cold record
//! stay in the control plane.

use core::fmt;
use core::net::IpAddr;
use std::sync::Arc;

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::crypto::{self, Aead, AeadAlg, Backend, KeyError, SALT_LEN};
use crate::esp::replay::{BadWindowSize, ReplayWindow};
use crate::ids::{SaId, Spi};
use crate::spd::Prefix;
use crate::stats::SaCounters;

/// Key material of one SA direction: AES key and the 4-byte GCM salt (RFC 4106 section 8.1).
/// Zeroized on drop; `Debug` never shows it.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SaKeys {
    #[zeroize(skip)]
    pub alg: AeadAlg,
    key: [u8; 32],
    pub salt: [u8; SALT_LEN],
}

impl SaKeys {
    /// From the KEYMAT slice IKEv2 or a static config yields: key followed by salt.
    pub fn from_keymat(alg: AeadAlg, keymat: &[u8]) -> Result<Self, SaBuildError> {
        let klen = alg.key_len();
        if keymat.len() != klen + SALT_LEN {
            return Err(SaBuildError::KeymatLength {
                expected: klen + SALT_LEN,
                got: keymat.len(),
            });
        }
        let mut key = [0u8; 32];
        let mut salt = [0u8; SALT_LEN];
        key[..klen].copy_from_slice(&keymat[..klen]);
        salt.copy_from_slice(&keymat[klen..]);
        Ok(SaKeys { alg, key, salt })
    }

    pub fn key(&self) -> &[u8] {
        &self.key[..self.alg.key_len()]
    }
}

impl fmt::Debug for SaKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SaKeys({:?}, <redacted>)", self.alg)
    }
}

/// RFC 3948 UDP encapsulation ports of an SA (4500 on both sides unless a NAT moved them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpEncap {
    pub local_port: u16,
    pub remote_port: u16,
}

/// Everything needed to build one direction of a tunnel-mode SA.
#[derive(Clone, Debug)]
pub struct SaParams {
    pub id: SaId,
    pub spi: Spi,
    pub keys: SaKeys,
    pub esn: bool,
    /// Anti-replay window in packets (inbound only; 64..=4096, a power of two).
    pub replay_window: u32,
    /// Tunnel endpoints: our address and the peer's.
    pub local: IpAddr,
    pub remote: IpAddr,
    pub encap: Option<UdpEncap>,
    /// Inner traffic this SA may carry: source and destination prefixes as seen in the
    /// outbound direction (local side first). Inbound checks the mirror image.
    pub local_ts: Prefix,
    pub remote_ts: Prefix,
    /// TTL / hop limit of the outer header.
    pub outer_ttl: u8,
}

impl SaParams {
    fn check_family(&self) -> Result<(), SaBuildError> {
        if self.local.is_ipv4() != self.remote.is_ipv4() {
            return Err(SaBuildError::MixedFamilies);
        }
        Ok(())
    }
}

/// Why an SA could not be built from its parameters.
#[derive(Debug, thiserror::Error)]
pub enum SaBuildError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Window(#[from] BadWindowSize),
    #[error("tunnel endpoints mix IPv4 and IPv6")]
    MixedFamilies,
    #[error("SPI 0 is reserved")]
    ZeroSpi,
    #[error("key material is {got} bytes, the algorithm needs {expected} (key + 4-byte salt)")]
    KeymatLength { expected: usize, got: usize },
}

/// Inbound runtime record. Hot fields first: what `open` touches per packet.
#[repr(C, align(64))]
pub struct InboundSa {
    pub spi: Spi,
    pub salt: [u8; SALT_LEN],
    pub id: SaId,
    pub esn: bool,
    pub replay: ReplayWindow,
    pub cipher: Box<dyn Aead>,
    pub counters: Arc<SaCounters>,
    // Post-decryption checks.
    /// Inner source must lie in `remote_ts`, inner destination in `local_ts`.
    pub local_ts: Prefix,
    pub remote_ts: Prefix,
    /// The peer's address this SA was negotiated with (informational: inbound lookup never
    /// looks at the outer source, M1).
    pub remote: IpAddr,
}

const _: () = assert!(core::mem::size_of::<InboundSa>() <= 192);
const _: () = assert!(core::mem::align_of::<InboundSa>() == 64);

/// Largest outer header a template holds: IPv6 (40) + UDP (8).
pub const MAX_OUTER: usize = 48;

/// Outbound runtime record. Owned by exactly one worker: its sequence number, which is also
/// the GCM explicit IV, is never shared across cores.
#[repr(C, align(64))]
pub struct OutboundSa {
    /// Last sequence number used (64-bit; the low half goes on the wire).
    pub seq: u64,
    pub spi: Spi,
    pub salt: [u8; SALT_LEN],
    pub esn: bool,
    pub ipv6: bool,
    pub encap: Option<UdpEncap>,
    pub outer_ttl: u8,
    pub id: SaId,
    pub cipher: Box<dyn Aead>,
    pub counters: Arc<SaCounters>,
    pub local: IpAddr,
    pub remote: IpAddr,
    pub local_ts: Prefix,
    pub remote_ts: Prefix,
}

const _: () = assert!(core::mem::size_of::<OutboundSa>() <= 192);
const _: () = assert!(core::mem::align_of::<OutboundSa>() == 64);

impl OutboundSa {
    /// Highest sequence number this SA may send: 2^32-1 without ESN (RFC 4303 3.3.3: never
    /// wrap; the SA must be rekeyed), 2^64-1 with it.
    pub fn seq_limit(&self) -> u64 {
        if self.esn {
            u64::MAX
        } else {
            u64::from(u32::MAX)
        }
    }

    /// Outer header bytes: IP (+ UDP).
    pub fn outer_len(&self) -> usize {
        let ip = if self.ipv6 { 40 } else { 20 };
        ip + if self.encap.is_some() { 8 } else { 0 }
    }

    /// Rebinds the tunnel endpoints (MOBIKE, NAT mapping change): same keys, same sequence.
    pub fn rebind(&mut self, local: IpAddr, remote: IpAddr, encap: Option<UdpEncap>) {
        self.local = local;
        self.remote = remote;
        self.ipv6 = local.is_ipv6();
        self.encap = encap;
    }
}

/// Builds the runtime records. Key schedules are expanded here, off the worker's fast path.
pub fn build_inbound(backend: Backend, p: &SaParams) -> Result<InboundSa, SaBuildError> {
    p.check_family()?;
    if p.spi.0 == 0 {
        return Err(SaBuildError::ZeroSpi);
    }
    Ok(InboundSa {
        spi: p.spi,
        salt: p.keys.salt,
        id: p.id,
        esn: p.esn,
        replay: ReplayWindow::new(p.replay_window, p.esn)?,
        cipher: crypto::new_aead(backend, p.keys.alg, p.keys.key())?,
        counters: Arc::new(SaCounters::default()),
        local_ts: p.local_ts,
        remote_ts: p.remote_ts,
        remote: p.remote,
    })
}

pub fn build_outbound(backend: Backend, p: &SaParams) -> Result<OutboundSa, SaBuildError> {
    p.check_family()?;
    if p.spi.0 == 0 {
        return Err(SaBuildError::ZeroSpi);
    }
    Ok(OutboundSa {
        seq: 0,
        spi: p.spi,
        salt: p.keys.salt,
        esn: p.esn,
        ipv6: p.local.is_ipv6(),
        encap: p.encap,
        outer_ttl: p.outer_ttl,
        id: p.id,
        cipher: crypto::new_aead(backend, p.keys.alg, p.keys.key())?,
        counters: Arc::new(SaCounters::default()),
        local: p.local,
        remote: p.remote,
        local_ts: p.local_ts,
        remote_ts: p.remote_ts,
    })
}
