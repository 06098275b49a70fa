//! Crypto layer of the data plane: AES-GCM (RFC 4106 ESP) and AES-CBC + HMAC (RFC 3602,
//! RFC 2404, RFC 4868; [`cbc`]) seal/open in place.
//!
//! This module owns:
//! - the [`Aead`] trait the hot path calls for GCM SAs and the [`CbcHmac`] trait for CBC
//!   SAs (one boxed instance per SA direction),
//! - the backends behind it: intel-ipsec-mb ([`Backend::IpsecMb`], feature `ipsecmb`, x86_64
//!   with AES-NI + PCLMULQDQ), ring ([`Backend::Ring`], always built) and [`Backend::Null`]
//!   (no crypto at all, for benchmarks of the rest of the pipeline only),
//! - backend selection ([`available`], [`best_backend`], [`new_aead`]) and the RFC 4106 nonce
//!   layout ([`esp_nonce`]).
//!
//! Key material is never printed: the `Debug` output of every type here shows only the
//! backend and algorithm. The ipsec-mb backend zeroizes its expanded key and GHASH tables on
//! drop and wipes its per-call GCM context; ring does not zeroize its key schedule.
//!
//! ESP framing (SPI/sequence AAD, IV on the wire, padding) is not handled here; callers pass the
//! 12-byte nonce (salt || IV) and the AAD bytes.

use std::fmt;

pub use proto::sa::{AeadAlg, CbcAlg, EspAlg, IntegAlg, SALT_LEN};

pub mod cbc;
mod cbc_portable;
#[cfg(test)]
mod cbc_tests;
#[cfg(ipsecmb)]
mod ipsecmb;
#[cfg(ipsecmb)]
mod ipsecmb_cbc;
mod null;
mod ring_backend;
#[cfg(test)]
mod tests;

pub use cbc::{new_cbc_hmac, CbcError, CbcHmac, IvGen};

/// Length of the GCM authentication tag (ICV) we use: always the full 16 bytes.
pub const TAG_LEN: usize = 16;
/// Length of the explicit per-packet IV carried in the ESP payload.
pub const IV_LEN: usize = 8;
/// Length of the GCM nonce: salt || IV.
pub const NONCE_LEN: usize = 12;

const _: () = assert!(SALT_LEN + IV_LEN == NONCE_LEN);

/// Which implementation performs the AEAD.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// intel-ipsec-mb's direct AES-GCM API (fastest on x86_64; needs feature `ipsecmb`).
    IpsecMb,
    /// ring's `LessSafeKey`.
    Ring,
    /// No crypto, for benches only: seal leaves the data as is and writes a zero tag; open
    /// accepts any tag. Never use it for traffic.
    Null,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::IpsecMb => "ipsec-mb",
            Backend::Ring => "ring",
            Backend::Null => "null",
        })
    }
}

/// Authentication failed: the tag does not match (wrong key, nonce, AAD, or tampering).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthError;

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AEAD authentication failed")
    }
}

impl std::error::Error for AuthError {}

/// Why an [`Aead`] could not be created.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key has the wrong length for the algorithm (the salt must not be included).
    #[error("{alg} needs a {expected}-byte key, got {got} bytes")]
    WrongKeyLength {
        /// Algorithm asked for.
        alg: AeadAlg,
        /// Required key length in bytes.
        expected: usize,
        /// Length that was passed.
        got: usize,
    },
    /// An AES-CBC or HMAC key of the wrong length.
    #[error("{what} needs a {expected}-byte key, got {got} bytes")]
    WrongCbcKeyLength {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    /// The backend is not compiled in, or the CPU / library cannot run it.
    #[error("AEAD backend {0} is not available (not compiled in or unsupported CPU)")]
    BackendUnavailable(Backend),
}

/// An AES-GCM key ready for use on the hot path. Instances are immutable and may be shared
/// between threads; every call takes the nonce explicitly.
///
/// Buffers must be shorter than GCM's limit of 2^36 − 32 bytes; backends may panic otherwise.
pub trait Aead: Send + Sync {
    /// The implementation behind this key.
    fn backend(&self) -> Backend;
    /// The algorithm of this key.
    fn alg(&self) -> AeadAlg;

    /// Bytes of key state this instance holds, its heap allocations included (the perf lab's
    /// per-SA memory footprint).
    fn state_bytes(&self) -> usize;

    /// Prefetches the key state a seal or open of `len` bytes will read (see
    /// [`crate::prefetch`]), so that a burst's SA lookups can bring it into the cache ahead
    /// of the packets that need it. Default: nothing (the key state is small or not ours).
    #[inline]
    fn prefetch(&self, len: usize) {
        let _ = len;
    }
    /// Encrypts `buf` in place and writes the tag.
    fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &mut [u8; TAG_LEN],
    );
    /// Verifies the tag and decrypts in place. On failure the buffer must not hold plaintext (zero it).
    fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AuthError>;
}

impl fmt::Debug for dyn Aead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Aead")
            .field("backend", &self.backend())
            .field("alg", &self.alg())
            .finish_non_exhaustive()
    }
}

/// Builds the RFC 4106 nonce: the 4-byte salt from the keying material followed by the 8-byte
/// explicit IV from the packet.
#[inline]
pub fn esp_nonce(salt: &[u8; SALT_LEN], iv: &[u8; IV_LEN]) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n[..SALT_LEN].copy_from_slice(salt);
    n[SALT_LEN..].copy_from_slice(iv);
    n
}

/// Creates an AEAD for `alg` with `key` (the AES key only, without the salt) on `backend`.
pub fn new_aead(backend: Backend, alg: AeadAlg, key: &[u8]) -> Result<Box<dyn Aead>, KeyError> {
    if key.len() != alg.key_len() {
        return Err(KeyError::WrongKeyLength {
            alg,
            expected: alg.key_len(),
            got: key.len(),
        });
    }
    match backend {
        Backend::Ring => Ok(Box::new(ring_backend::RingGcm::new(alg, key))),
        Backend::Null => Ok(Box::new(null::NullAead::new(alg))),
        #[cfg(ipsecmb)]
        Backend::IpsecMb => {
            ipsecmb::new_gcm(alg, key).ok_or(KeyError::BackendUnavailable(Backend::IpsecMb))
        }
        #[cfg(not(ipsecmb))]
        Backend::IpsecMb => Err(KeyError::BackendUnavailable(Backend::IpsecMb)),
    }
}

/// Whether `backend` can be used in this process.
///
/// `IpsecMb` requires the `ipsecmb` feature, an x86_64 CPU with AES-NI and PCLMULQDQ, and a
/// successful manager initialisation (done once, on first call). `Ring` and `Null` are always
/// available.
pub fn available(backend: Backend) -> bool {
    match backend {
        Backend::Ring | Backend::Null => true,
        #[cfg(ipsecmb)]
        Backend::IpsecMb => ipsecmb::runtime().is_some(),
        #[cfg(not(ipsecmb))]
        Backend::IpsecMb => false,
    }
}

/// The fastest real backend: ipsec-mb if [`available`], else ring. Never `Null`.
pub fn best_backend() -> Backend {
    if available(Backend::IpsecMb) {
        Backend::IpsecMb
    } else {
        Backend::Ring
    }
}

/// One line for start-up output: the AEAD backend in use and why. `chosen` says whether the
/// operator named it (`--crypto`, `crypto_backend:`) or [`best_backend`] picked it.
pub fn describe_backend(backend: Backend, chosen: bool) -> String {
    match backend {
        Backend::IpsecMb => format!(
            "AEAD backend: intel-ipsec-mb ({} code path){}",
            ipsecmb_arch().unwrap_or("unknown"),
            if chosen {
                ", as configured"
            } else {
                ", the fast path"
            }
        ),
        Backend::Ring if chosen => "AEAD backend: ring, as configured".to_owned(),
        Backend::Ring => format!("AEAD backend: ring, because {}", ipsecmb_unavailable()),
        Backend::Null => "AEAD backend: null (NO ENCRYPTION: perf lab only)".to_owned(),
    }
}

/// Why the ipsec-mb backend cannot be used in this process (empty reasons never occur: when it
/// can be used this says so).
pub fn ipsecmb_unavailable() -> String {
    #[cfg(ipsecmb)]
    {
        match ipsecmb::unavailable_reason() {
            Some(why) => format!("intel-ipsec-mb is built in but unusable here: {why}"),
            None => "intel-ipsec-mb is available".to_owned(),
        }
    }
    #[cfg(not(ipsecmb))]
    {
        if cfg!(feature = "ipsecmb") {
            "this build has no intel-ipsec-mb (its headers were missing when it was built: \
             apt-get install libipsec-mb-dev, then rebuild)"
                .to_owned()
        } else {
            "this build has no intel-ipsec-mb (built without the `ipsecmb` feature)".to_owned()
        }
    }
}

/// The code path intel-ipsec-mb's `init_mb_mgr_auto` selected ("sse", "avx", "avx2",
/// "avx512"), or `None` if the ipsec-mb backend is not available. For status output.
pub fn ipsecmb_arch() -> Option<&'static str> {
    #[cfg(ipsecmb)]
    {
        ipsecmb::runtime().map(|rt| rt.arch)
    }
    #[cfg(not(ipsecmb))]
    {
        None
    }
}

/// Constant-time equality of two tags (no early exit on the first differing byte).
#[cfg(any(ipsecmb, test))]
#[inline]
pub(crate) fn tags_equal(a: &[u8; TAG_LEN], b: &[u8; TAG_LEN]) -> bool {
    let mut diff = 0u8;
    for i in 0..TAG_LEN {
        diff |= a[i] ^ b[i];
    }
    // Keep the optimiser from turning the accumulation into a data-dependent early exit.
    std::hint::black_box(diff) == 0
}
