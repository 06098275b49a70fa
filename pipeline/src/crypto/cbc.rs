//! ESP with AES-CBC and an HMAC (RFC 3602 with RFC 2404 / RFC 4868): the [`CbcHmac`] trait,
//! its backends' common framing, and the outbound IV generator ([`IvGen`]).
//!
//! This module owns the layout of a CBC ESP packet as the backends see it, from the SPI to the
//! end of the ICV:
//! `[SPI][seq lo][IV 16][ciphertext: n * 16][ICV icv_len]`.
//! The ICV covers SPI through ciphertext, followed by the high half of the sequence number when
//! the SA uses ESN (RFC 4303 2.2.1: it is authenticated but not sent). Encryption comes
//! first and the ICV covers the ciphertext (encrypt-then-MAC); on receipt the ICV is checked
//! in constant time and a mismatch leaves no plaintext behind.
//!
//! It never chooses padding or parses the trailer (the ESP layer does), and never sends an IV
//! anyone can predict: RFC 3602 3 requires the IV to be unpredictable (CBC with a predictable
//! IV falls to chosen-plaintext attacks, the BEAST attack on TLS 1.0 being the known case). An
//! [`IvGen`] encrypts the SA's unique 64-bit sequence number under a per-SA random key that
//! never leaves the process: NIST SP 800-38A appendix C's first method (the forward cipher
//! applied to a nonce), with its own key as Linux's `echainiv` and `seqiv` generators keep
//! theirs; one AES block per packet, no random-number call on the fast path.

use std::fmt;

use aes::cipher::{BlockEncrypt, KeyInit};
use zeroize::Zeroize;

use super::{AuthError, Backend, CbcAlg, IntegAlg, KeyError};

/// AES block, also the CBC IV length.
pub const BLOCK_LEN: usize = 16;
/// Length of the explicit IV of an AES-CBC ESP packet.
pub const CBC_IV_LEN: usize = BLOCK_LEN;
/// SPI and sequence number.
pub const HEADER_LEN: usize = 8;
/// Where the ciphertext starts in the ESP packet.
pub const CT_OFFSET: usize = HEADER_LEN + CBC_IV_LEN;
/// Longest ICV (HMAC-SHA-512-256).
pub const MAX_ICV_LEN: usize = 32;

/// Why a CBC ESP packet could not be sealed or opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CbcError {
    /// The ciphertext is empty or not a multiple of the block size, or the buffer is shorter
    /// than header, IV and ICV.
    Length,
    /// The ICV does not match.
    Auth,
    /// The backend failed (ipsec-mb could not give this thread a manager, or refused a job).
    Backend,
}

impl From<AuthError> for CbcError {
    fn from(_: AuthError) -> CbcError {
        CbcError::Auth
    }
}

/// AES-CBC + HMAC for one SA direction. Immutable after creation; shared between threads.
pub trait CbcHmac: Send + Sync {
    /// The implementation behind this key.
    fn backend(&self) -> Backend;
    /// The cipher and integrity algorithms of this key.
    fn alg(&self) -> (CbcAlg, IntegAlg);
    /// Bytes of key state, heap included.
    fn state_bytes(&self) -> usize;
    /// Prefetches the key state every packet reads (see `Aead::prefetch`).
    #[inline]
    fn prefetch(&self) {}
    /// `esp` is one ESP packet from the SPI to the end of the ICV (see the module doc) with
    /// the plaintext (already padded to whole blocks) in the ciphertext field and the IV in
    /// place. Encrypts in place, then writes the ICV over SPI..ciphertext (|| `esn_hi`).
    fn seal_in_place(&self, esp: &mut [u8], esn_hi: Option<u32>) -> Result<(), CbcError>;
    /// Checks the ICV over SPI..ciphertext (|| `esn_hi`) and decrypts the ciphertext field in
    /// place. On failure the ciphertext field holds no plaintext (it is zeroed). The ICV field
    /// may be overwritten in either case.
    fn open_in_place(&self, esp: &mut [u8], esn_hi: Option<u32>) -> Result<(), CbcError>;

    /// The ipsec-mb key state behind this key, for [`seal_burst`] / [`open_burst`] to batch
    /// its packets' jobs with other SAs' (`None`: another backend, sealed one by one).
    #[cfg(ipsecmb)]
    #[doc(hidden)]
    fn ipsecmb(&self) -> Option<&super::ipsecmb_cbc::IpsecMbCbcHmac> {
        None
    }

    /// Known-answer hooks: the truncated HMAC of any `data` (the buffer may be used as
    /// scratch), and bare CBC over whole blocks.
    #[cfg(test)]
    fn hmac_only(&self, data: &mut [u8], icv: &mut [u8]) -> Result<(), CbcError>;
    #[cfg(test)]
    fn cbc_only(&self, iv: &[u8; 16], data: &mut [u8], encrypt: bool) -> Result<(), CbcError>;
}

impl fmt::Debug for dyn CbcHmac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CbcHmac")
            .field("backend", &self.backend())
            .field("alg", &self.alg())
            .finish_non_exhaustive()
    }
}

/// One packet of a burst for [`seal_burst`] / [`open_burst`]: the SA direction's key, the ESP
/// packet (as [`CbcHmac::seal_in_place`] takes it), the ESN high half the ICV covers, and,
/// after the call, the outcome.
pub struct CbcJob<'a> {
    pub imp: &'a dyn CbcHmac,
    pub esp: &'a mut [u8],
    pub esn_hi: Option<u32>,
    pub result: Result<(), CbcError>,
}

impl<'a> CbcJob<'a> {
    /// A job not yet run (its result says so until the burst call sets it).
    pub fn new(imp: &'a dyn CbcHmac, esp: &'a mut [u8], esn_hi: Option<u32>) -> CbcJob<'a> {
        CbcJob {
            imp,
            esp,
            esn_hi,
            result: Err(CbcError::Backend),
        }
    }
}

/// Seals every packet of a burst, each with its own SA's key (SAs and lengths may be mixed),
/// as [`CbcHmac::seal_in_place`] would one by one; sets each job's `result`.
///
/// On the ipsec-mb backend every packet becomes one job (AES-CBC, then the HMAC over the
/// ciphertext, `IMB_ORDER_CIPHER_HASH`) submitted to one of this thread's managers, which are
/// flushed once at the end: the multi-buffer code paths encrypt and hash up to 16 packets in
/// parallel lanes, where one packet at a time leaves all but one lane idle (CBC encryption is
/// serial within a packet); the jobs that would leave most lanes of a pass idle (a small
/// burst, or the remainder past whole passes) go to the SSE manager, which hashes HMAC-SHA-1/256
/// on the SHA extensions (`ipsecmb_cbc::wide_share`). Other backends seal one packet after the
/// other.
pub fn seal_burst(jobs: &mut [CbcJob<'_>]) {
    burst(jobs, true)
}

/// Opens every packet of a burst as [`CbcHmac::open_in_place`] would one by one (ICV checked
/// in constant time, mismatch leaves no plaintext behind); on ipsec-mb batched like
/// [`seal_burst`], with the HMAC before the decryption (`IMB_ORDER_HASH_CIPHER`).
pub fn open_burst(jobs: &mut [CbcJob<'_>]) {
    burst(jobs, false)
}

fn burst(jobs: &mut [CbcJob<'_>], encrypt: bool) {
    #[cfg(ipsecmb)]
    if super::ipsecmb_cbc::burst(jobs, encrypt) {
        return;
    }
    for j in jobs {
        j.result = if encrypt {
            j.imp.seal_in_place(j.esp, j.esn_hi)
        } else {
            j.imp.open_in_place(j.esp, j.esn_hi)
        };
    }
}

/// The ciphertext length of a CBC ESP packet of `len` bytes with an `icv_len`-byte ICV, when
/// it is a positive multiple of the block size.
#[inline]
pub(crate) fn ct_len(len: usize, icv_len: usize) -> Result<usize, CbcError> {
    match len.checked_sub(CT_OFFSET + icv_len) {
        Some(n) if n > 0 && n % BLOCK_LEN == 0 => Ok(n),
        _ => Err(CbcError::Length),
    }
}

/// Creates AES-CBC + HMAC state for `cipher` with `key` and `integ` with `integ_key` on
/// `backend`.
pub fn new_cbc_hmac(
    backend: Backend,
    cipher: CbcAlg,
    key: &[u8],
    integ: IntegAlg,
    integ_key: &[u8],
) -> Result<Box<dyn CbcHmac>, KeyError> {
    if key.len() != cipher.key_len() {
        return Err(KeyError::WrongCbcKeyLength {
            what: "AES-CBC",
            expected: cipher.key_len(),
            got: key.len(),
        });
    }
    if integ_key.len() != integ.key_len() {
        return Err(KeyError::WrongCbcKeyLength {
            what: "HMAC",
            expected: integ.key_len(),
            got: integ_key.len(),
        });
    }
    match backend {
        Backend::Ring => Ok(Box::new(super::cbc_portable::PortableCbcHmac::new(
            cipher, key, integ, integ_key,
        ))),
        Backend::Null => Ok(Box::new(NullCbcHmac { cipher, integ })),
        #[cfg(ipsecmb)]
        Backend::IpsecMb => super::ipsecmb_cbc::IpsecMbCbcHmac::new(cipher, key, integ, integ_key)
            .map(|a| Box::new(a) as Box<dyn CbcHmac>)
            .ok_or(KeyError::BackendUnavailable(Backend::IpsecMb)),
        #[cfg(not(ipsecmb))]
        Backend::IpsecMb => Err(KeyError::BackendUnavailable(Backend::IpsecMb)),
    }
}

/// Constant-time equality of two ICVs of the same length (no early exit); `false` for
/// different lengths (which are public).
#[inline]
pub(crate) fn icv_equal(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

/// Makes the unpredictable explicit IVs of one outbound CBC SA: `IV = AES-128(K_iv, seq || SPI
/// || 0)` with `K_iv` random per SA (see the module doc). Distinct sequence numbers give
/// distinct, pseudorandom IVs; the key is zeroized on drop and never printed.
pub struct IvGen {
    key: aes::Aes128Enc,
}

/// The random IV key could not be drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the system random number generator failed")]
pub struct RandomError;

impl IvGen {
    /// A generator with a fresh random key (from the operating system).
    pub fn random() -> Result<IvGen, RandomError> {
        use ring::rand::SecureRandom;
        let mut k = [0u8; 16];
        ring::rand::SystemRandom::new()
            .fill(&mut k)
            .map_err(|_| RandomError)?;
        let g = IvGen::with_key(&k);
        k.zeroize();
        Ok(g)
    }

    /// A generator with a given key: tests and known-answer vectors only.
    pub fn with_key(key: &[u8; 16]) -> IvGen {
        IvGen {
            key: aes::Aes128Enc::new(key.into()),
        }
    }

    /// The IV of the packet with sequence number `seq` (64 bits) on SPI `spi`.
    #[inline]
    pub fn iv(&self, spi: u32, seq: u64) -> [u8; CBC_IV_LEN] {
        let mut b = [0u8; CBC_IV_LEN];
        b[..8].copy_from_slice(&seq.to_be_bytes());
        b[8..12].copy_from_slice(&spi.to_be_bytes());
        let mut block = aes::Block::from(b);
        self.key.encrypt_block(&mut block);
        block.into()
    }

    pub fn state_bytes(&self) -> usize {
        core::mem::size_of::<Self>()
    }
}

impl fmt::Debug for IvGen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IvGen(<redacted>)")
    }
}

/// No crypto, for benches only: seal leaves the data as is and writes a zero ICV; open accepts
/// any ICV.
struct NullCbcHmac {
    cipher: CbcAlg,
    integ: IntegAlg,
}

impl CbcHmac for NullCbcHmac {
    fn backend(&self) -> Backend {
        Backend::Null
    }
    fn alg(&self) -> (CbcAlg, IntegAlg) {
        (self.cipher, self.integ)
    }
    fn state_bytes(&self) -> usize {
        core::mem::size_of::<Self>()
    }
    fn seal_in_place(&self, esp: &mut [u8], _: Option<u32>) -> Result<(), CbcError> {
        let n = ct_len(esp.len(), self.integ.icv_len())?;
        if let Some(icv) = esp.get_mut(CT_OFFSET + n..) {
            icv.fill(0);
        }
        Ok(())
    }
    fn open_in_place(&self, esp: &mut [u8], _: Option<u32>) -> Result<(), CbcError> {
        ct_len(esp.len(), self.integ.icv_len()).map(|_| ())
    }
    #[cfg(test)]
    fn hmac_only(&self, _: &mut [u8], icv: &mut [u8]) -> Result<(), CbcError> {
        icv.fill(0);
        Ok(())
    }
    #[cfg(test)]
    fn cbc_only(&self, _: &[u8; 16], _: &mut [u8], _: bool) -> Result<(), CbcError> {
        Ok(())
    }
}
