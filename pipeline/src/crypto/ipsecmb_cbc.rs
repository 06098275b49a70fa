//! The intel-ipsec-mb backend of AES-CBC + HMAC: one job per packet through the job API,
//! which ciphers and hashes in one pass (cipher then hash when sealing, hash then cipher when
//! opening, `IMB_CHAIN_ORDER`).
//!
//! The job API keeps queues in its manager, so each thread that seals or opens gets its own
//! `IMB_MGR` (a thread-local, allocated on first use and freed when the thread ends); a packet's
//! job is submitted and, when the multi-buffer lanes hold it back, flushed at once, so no job
//! ever outlives the call that made it. Per key, the expanded AES keys and the HMAC's inner and
//! outer hash states (ipad/opad, hashed once) live in one 64-byte-aligned heap block that is
//! zeroized on drop.
//!
//! Each thread has two managers: the SSE code path for single packets and the small share of
//! a burst (HMAC-SHA-1/256 on the CPU's SHA extensions, one or two buffers at a time), and the
//! widest code path for the rest of a burst (16 lanes on AVX-512): see [`wide_share`].
//!
//! One of the two modules of the crate allowed to use `unsafe` (with `ipsecmb`).
#![allow(unsafe_code)]

use std::fmt;
use std::ptr;

use ipsecmb_sys as ffi;
use zeroize::Zeroize;

use super::cbc::{
    ct_len, icv_equal, CbcError, CbcHmac, CbcJob, CBC_IV_LEN, CT_OFFSET, MAX_ICV_LEN,
};
use super::{ipsecmb, Backend, CbcAlg, IntegAlg};

/// A thread's own job manager (the job API is not thread-safe).
struct ThreadMgr(*mut ffi::IMB_MGR);

impl ThreadMgr {
    /// The manager of single-packet calls ([`CbcHmac::seal_in_place`]): the SSE code path,
    /// not the widest one `init_mb_mgr_auto` picks: a packet's job is flushed alone, and the
    /// AVX-512 manager hashes HMAC-SHA-1/256 sixteen lanes wide in software, paying for all
    /// sixteen lanes per flushed packet, where the SSE manager uses the CPU's SHA extensions
    /// on one buffer.
    fn single() -> ThreadMgr {
        // SAFETY: `mgr` is a fresh, exclusive manager (ThreadMgr::init's contract).
        ThreadMgr::init(|mgr| unsafe { ffi::init_mb_mgr_sse(mgr) })
    }

    /// The manager of bursts ([`burst`]): the widest code path the CPU runs
    /// (`init_mb_mgr_auto`), whose lanes a burst fills. Measured on an AVX-512 + VAES +
    /// SHA-NI CPU (`esp-ratio` in `benches/aead.rs`: fastest of 2000 interleaved rounds on a
    /// loaded machine): a burst of 32 packets of 1420 B with AES-256-CBC + HMAC-SHA-256 sealed
    /// in 18.6 us on AVX-512, 28.6 us on SSE, 28.2 us on AVX2 (AES-CBC in 8 AVX lanes, HMAC on
    /// the SHA extensions); of the 18.6 us, the HMAC alone takes 13.4 us (16 AVX-512 lanes; 20.8
    /// us on SSE's SHA extensions, 29.5 us with ring) and AES-CBC alone 5.2 us, against 3.8 us
    /// for AES-256-GCM of the same packets.
    fn burst() -> ThreadMgr {
        ThreadMgr::init(|mgr| {
            let mut arch = ffi::IMB_ARCH::IMB_ARCH_NONE;
            // SAFETY: `mgr` is a fresh, exclusive manager (ThreadMgr::init's contract), `arch`
            // a writable IMB_ARCH.
            unsafe { ffi::init_mb_mgr_auto(mgr, &mut arch) }
        })
    }

    /// Allocates a manager and runs `init` on it (which must only initialise the fresh,
    /// exclusive manager it is given); null when ipsec-mb is unavailable or fails.
    fn init(init: impl FnOnce(*mut ffi::IMB_MGR)) -> ThreadMgr {
        if ipsecmb::runtime().is_none() {
            return ThreadMgr(ptr::null_mut());
        }
        // SAFETY: alloc_mb_mgr has no preconditions and returns NULL on failure (checked).
        let mgr = unsafe { ffi::alloc_mb_mgr(0) };
        if mgr.is_null() {
            return ThreadMgr(mgr);
        }
        init(mgr);
        // SAFETY: `mgr` is valid.
        if unsafe { ffi::imb_get_errno(mgr) } != 0 {
            // SAFETY: allocated above, not used afterwards.
            unsafe { ffi::free_mb_mgr(mgr) };
            return ThreadMgr(ptr::null_mut());
        }
        ThreadMgr(mgr)
    }
}

impl Drop for ThreadMgr {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: allocated by alloc_mb_mgr on this thread; every job was completed by
            // the call that submitted it, and nothing uses the manager after this.
            unsafe { ffi::free_mb_mgr(self.0) };
        }
    }
}

thread_local! {
    static MGR: ThreadMgr = ThreadMgr::single();
    static BURST_MGR: ThreadMgr = ThreadMgr::burst();
}

/// Expanded keys and hashed pads of one SA direction. The assembly wants the key schedules
/// 16-byte aligned; 64 keeps each part on its own lines.
#[repr(C, align(64))]
struct KeyData {
    enc: [u8; 256],
    dec: [u8; 256],
    ipad: [u8; 64],
    opad: [u8; 64],
}

pub struct IpsecMbCbcHmac {
    cipher: CbcAlg,
    integ: IntegAlg,
    keys: Box<KeyData>,
}

impl IpsecMbCbcHmac {
    /// Expands the keys; `None` if the backend is unavailable. Lengths were checked by
    /// `new_cbc_hmac`.
    pub(super) fn new(
        cipher: CbcAlg,
        key: &[u8],
        integ: IntegAlg,
        integ_key: &[u8],
    ) -> Option<IpsecMbCbcHmac> {
        if key.len() != cipher.key_len() || integ_key.len() != integ.key_len() {
            return None;
        }
        let mut keys = Box::new(KeyData {
            enc: [0; 256],
            dec: [0; 256],
            ipad: [0; 64],
            opad: [0; 64],
        });
        MGR.with(|m| {
            let mgr = m.0;
            if mgr.is_null() {
                return None;
            }
            // SAFETY: `mgr` is this thread's initialised manager; we read function pointers.
            let (keyexp, one_block) = unsafe {
                let keyexp = match cipher {
                    CbcAlg::AesCbc128 => (*mgr).keyexp_128,
                    CbcAlg::AesCbc256 => (*mgr).keyexp_256,
                };
                let one_block = match integ {
                    IntegAlg::HmacSha1_96 => (*mgr).sha1_one_block,
                    IntegAlg::HmacSha256_128 => (*mgr).sha256_one_block,
                    IntegAlg::HmacSha384_192 => (*mgr).sha384_one_block,
                    IntegAlg::HmacSha512_256 => (*mgr).sha512_one_block,
                };
                (keyexp?, one_block?)
            };
            // SAFETY: keyexp reads key_len() bytes of key (checked above) and writes at most
            // 15 round keys (240 bytes) into each 256-byte schedule.
            unsafe {
                keyexp(
                    key.as_ptr().cast(),
                    keys.enc.as_mut_ptr().cast(),
                    keys.dec.as_mut_ptr().cast(),
                )
            };
            // RFC 2104: the key, zero-padded to the hash's block, XORed with 0x36 / 0x5c; the
            // job API takes the state after hashing each as the first block.
            let mut block = [0u8; 128];
            for (pad, out) in [(0x36u8, &mut keys.ipad), (0x5cu8, &mut keys.opad)] {
                block.fill(pad);
                for (b, k) in block.iter_mut().zip(integ_key) {
                    *b ^= k;
                }
                // SAFETY: one_block reads one block of its hash (64 or 128 bytes, all of `block` at
                // most) and
                // writes the hash state (at most 64 bytes) into `out`.
                unsafe { one_block(block.as_ptr().cast(), out.as_mut_ptr().cast()) };
            }
            block.zeroize();
            Some(())
        })?;
        Some(IpsecMbCbcHmac {
            cipher,
            integ,
            keys,
        })
    }

    /// Runs one job over `buf`: the cipher (if any) over `len` bytes at `offset` under `iv`,
    /// then (or before, when decrypting) the hash (if `hash_len` > 0) over the first
    /// `hash_len` bytes; the truncated ICV goes to `icv_out`.
    fn run(
        &self,
        buf: &mut [u8],
        cipher: Option<CipherPart>,
        hash_len: usize,
        icv_out: &mut [u8],
    ) -> Result<(), CbcError> {
        let (offset, len, iv) = match cipher {
            Some(c) => (c.offset, c.len, c.iv),
            None => (0, 0, [0; CBC_IV_LEN]),
        };
        if buf.len() < hash_len
            || offset.checked_add(len).is_none_or(|end| end > buf.len())
            || len % super::cbc::BLOCK_LEN != 0
            || (hash_len > 0 && icv_out.len() != self.integ.icv_len())
        {
            return Err(CbcError::Length);
        }
        MGR.with(|m| {
            let mgr = m.0;
            if mgr.is_null() {
                return Err(CbcError::Backend);
            }
            let p = buf.as_mut_ptr();
            // Each call completes its job before returning, so no other job is in flight on
            // `mgr`; the job from get_next_job is valid until submitted; in-place ciphering
            // (src == dst) is supported. `p` covers `hash_len` and `offset + len` bytes
            // (checked above), `iv` is a local 16-byte array, the key schedules and pads are
            // in `self.keys`, `icv_out` holds icv_len() bytes.
            // SAFETY: `mgr` is this thread's manager, and every pointer stored in the job
            // lives until this block ends (see above).
            unsafe {
                let (Some(next), Some(submit), Some(flush)) =
                    ((*mgr).get_next_job, (*mgr).submit_job, (*mgr).flush_job)
                else {
                    return Err(CbcError::Backend);
                };
                let job = next(mgr);
                fill(
                    &mut *job,
                    self,
                    p,
                    cipher.map(|c| (c.offset, c.len, iv.as_ptr(), c.encrypt)),
                    hash_len,
                    icv_out.as_mut_ptr(),
                    icv_out.len(),
                );
                let mut done = submit(mgr);
                if done.is_null() {
                    done = flush(mgr);
                }
                if done != job {
                    // Only ever one job in flight: anything else is a library fault. Drain
                    // so that no job can later write through stale pointers.
                    while !flush(mgr).is_null() {}
                    return Err(CbcError::Backend);
                }
                if (*done).status.0 != ffi::IMB_STATUS::IMB_STATUS_COMPLETED.0 {
                    return Err(CbcError::Backend);
                }
            }
            Ok(())
        })
    }

    /// The ESP job: cipher over the ciphertext field, hash over SPI..ciphertext (+ `extra`).
    fn esp_job(
        &self,
        esp: &mut [u8],
        ct: usize,
        extra: usize,
        encrypt: bool,
        icv_out: &mut [u8],
    ) -> Result<(), CbcError> {
        let iv = esp
            .get(CT_OFFSET - CBC_IV_LEN..CT_OFFSET)
            .and_then(|b| <[u8; CBC_IV_LEN]>::try_from(b).ok())
            .ok_or(CbcError::Length)?;
        let cipher = CipherPart {
            offset: CT_OFFSET,
            len: ct,
            iv,
            encrypt,
        };
        self.run(esp, Some(cipher), CT_OFFSET + ct + extra, icv_out)
    }
}

/// The cipher half of a job.
#[derive(Clone, Copy)]
struct CipherPart {
    offset: usize,
    len: usize,
    iv: [u8; CBC_IV_LEN],
    encrypt: bool,
}

impl Drop for IpsecMbCbcHmac {
    fn drop(&mut self) {
        self.keys.enc.zeroize();
        self.keys.dec.zeroize();
        self.keys.ipad.zeroize();
        self.keys.opad.zeroize();
    }
}

impl fmt::Debug for IpsecMbCbcHmac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IpsecMbCbcHmac")
            .field("cipher", &self.cipher)
            .field("integ", &self.integ)
            .finish_non_exhaustive()
    }
}

impl CbcHmac for IpsecMbCbcHmac {
    fn backend(&self) -> Backend {
        Backend::IpsecMb
    }

    fn alg(&self) -> (CbcAlg, IntegAlg) {
        (self.cipher, self.integ)
    }

    fn state_bytes(&self) -> usize {
        core::mem::size_of::<Self>() + core::mem::size_of::<KeyData>()
    }

    fn ipsecmb(&self) -> Option<&IpsecMbCbcHmac> {
        Some(self)
    }

    #[inline]
    fn prefetch(&self) {
        // The encryption round keys and both pads: the lines every packet reads.
        crate::prefetch::line(&self.keys.enc[0]);
        crate::prefetch::line(&self.keys.enc[64]);
        crate::prefetch::line(&self.keys.ipad[0]);
        crate::prefetch::line(&self.keys.opad[0]);
    }

    fn seal_in_place(&self, esp: &mut [u8], esn_hi: Option<u32>) -> Result<(), CbcError> {
        let icv_len = self.integ.icv_len();
        let ct = ct_len(esp.len(), icv_len)?;
        let extra = put_esn_hi(esp, CT_OFFSET + ct, esn_hi)?;
        let mut icv = [0u8; MAX_ICV_LEN];
        let icv = icv.get_mut(..icv_len).ok_or(CbcError::Length)?;
        self.esp_job(esp, ct, extra, true, icv)?;
        esp.get_mut(CT_OFFSET + ct..)
            .ok_or(CbcError::Length)?
            .copy_from_slice(icv);
        Ok(())
    }

    fn open_in_place(&self, esp: &mut [u8], esn_hi: Option<u32>) -> Result<(), CbcError> {
        let icv_len = self.integ.icv_len();
        let ct = ct_len(esp.len(), icv_len)?;
        let mut received = [0u8; MAX_ICV_LEN];
        let received = received.get_mut(..icv_len).ok_or(CbcError::Length)?;
        received.copy_from_slice(esp.get(CT_OFFSET + ct..).ok_or(CbcError::Length)?);
        let extra = put_esn_hi(esp, CT_OFFSET + ct, esn_hi)?;
        let mut computed = [0u8; MAX_ICV_LEN];
        let computed = computed.get_mut(..icv_len).ok_or(CbcError::Length)?;
        let r = self.esp_job(esp, ct, extra, false, computed);
        let ok = r.is_ok() && icv_equal(computed, received);
        if !ok {
            // The job decrypted whatever arrived: leave none of it behind.
            if let Some(pt) = esp.get_mut(CT_OFFSET..CT_OFFSET + ct) {
                pt.zeroize();
            }
            return Err(r.err().unwrap_or(CbcError::Auth));
        }
        Ok(())
    }

    #[cfg(test)]
    fn hmac_only(&self, data: &mut [u8], icv: &mut [u8]) -> Result<(), CbcError> {
        let n = data.len();
        self.run(data, None, n, icv)
    }

    #[cfg(test)]
    fn cbc_only(&self, iv: &[u8; 16], data: &mut [u8], encrypt: bool) -> Result<(), CbcError> {
        let cipher = CipherPart {
            offset: 0,
            len: data.len(),
            iv: *iv,
            encrypt,
        };
        self.run(data, Some(cipher), 0, &mut [])
    }
}

/// Writes the ESN high half at `at` (the start of the ICV field, which the hash reads before
/// the ICV is written or after it was saved) and returns how many bytes the hash covers
/// beyond the ciphertext.
fn put_esn_hi(esp: &mut [u8], at: usize, esn_hi: Option<u32>) -> Result<usize, CbcError> {
    match esn_hi {
        None => Ok(0),
        Some(hi) => {
            esp.get_mut(at..at + 4)
                .ok_or(CbcError::Length)?
                .copy_from_slice(&hi.to_be_bytes());
            Ok(4)
        }
    }
}

/// Fills `j`: the cipher (if any: offset, length, IV, direction) over `p`, and (if
/// `hash_len` > 0) the HMAC of `k` over the first `hash_len` bytes of `p` into `icv` (`icv_len`
/// bytes); cipher then hash when encrypting, hash then cipher when decrypting.
///
/// # Safety
/// `j` is a job of a manager; `p` covers `hash_len` bytes and the cipher's range, the IV 16
/// bytes, `icv` `icv_len` bytes, and all of them (and `k`) stay valid, and are neither read nor
/// written by anyone else, until the job has come back from the manager.
#[allow(clippy::too_many_arguments)]
unsafe fn fill(
    j: &mut ffi::IMB_JOB,
    k: &IpsecMbCbcHmac,
    p: *mut u8,
    cipher: Option<(usize, usize, *const u8, bool)>,
    hash_len: usize,
    icv: *mut u8,
    icv_len: usize,
) {
    let (offset, len, iv, encrypt) = cipher.unwrap_or((0, 0, ptr::null(), true));
    j.enc_keys = k.keys.enc.as_ptr().cast();
    j.dec_keys = k.keys.dec.as_ptr().cast();
    j.key_len_in_bytes = k.cipher.key_len() as u64;
    j.__bindgen_anon_1.src = p;
    // SAFETY: `offset` lies within the buffer (the caller's contract).
    j.__bindgen_anon_2.dst = unsafe { p.add(offset) };
    j.__bindgen_anon_3.cipher_start_src_offset_in_bytes = offset as u64;
    j.__bindgen_anon_4.msg_len_to_cipher_in_bytes = len as u64;
    j.hash_start_src_offset_in_bytes = 0;
    j.__bindgen_anon_5.msg_len_to_hash_in_bytes = hash_len as u64;
    j.iv = iv;
    j.iv_len_in_bytes = CBC_IV_LEN as u64;
    j.auth_tag_output = icv;
    j.auth_tag_output_len_in_bytes = icv_len as u64;
    j.u.HMAC._hashed_auth_key_xor_ipad = k.keys.ipad.as_ptr();
    j.u.HMAC._hashed_auth_key_xor_opad = k.keys.opad.as_ptr();
    j.cipher_mode = if cipher.is_some() {
        ffi::IMB_CIPHER_MODE::IMB_CIPHER_CBC
    } else {
        ffi::IMB_CIPHER_MODE::IMB_CIPHER_NULL
    };
    j.hash_alg = match k.integ {
        _ if hash_len == 0 => ffi::IMB_HASH_ALG::IMB_AUTH_NULL,
        IntegAlg::HmacSha1_96 => ffi::IMB_HASH_ALG::IMB_AUTH_HMAC_SHA_1,
        IntegAlg::HmacSha256_128 => ffi::IMB_HASH_ALG::IMB_AUTH_HMAC_SHA_256,
        IntegAlg::HmacSha384_192 => ffi::IMB_HASH_ALG::IMB_AUTH_HMAC_SHA_384,
        IntegAlg::HmacSha512_256 => ffi::IMB_HASH_ALG::IMB_AUTH_HMAC_SHA_512,
    };
    if encrypt {
        j.cipher_direction = ffi::IMB_CIPHER_DIRECTION::IMB_DIR_ENCRYPT;
        j.chain_order = ffi::IMB_CHAIN_ORDER::IMB_ORDER_CIPHER_HASH;
    } else {
        j.cipher_direction = ffi::IMB_CIPHER_DIRECTION::IMB_DIR_DECRYPT;
        j.chain_order = ffi::IMB_CHAIN_ORDER::IMB_ORDER_HASH_CIPHER;
    }
}

/// Jobs in flight at most per manager pass (the manager's queue holds `IMB_MAX_JOBS`, 128).
const CHUNK: usize = 64;

/// How many of a chunk's `n` jobs with `integ` go to the widest code path; the rest go to the
/// SSE manager. The AVX-512 manager hashes HMAC-SHA-1/256 in 16 lanes (SHA-384/512 in 8) and
/// encrypts AES-CBC in 16, and a pass costs every lane, used or not; the SSE manager hashes
/// HMAC-SHA-1/256 one or two at a time on the SHA extensions. So jobs that would leave too
/// many lanes of a pass empty (all of them in a small burst, the remainder past whole passes
/// in a bigger one) go to SSE. Measured on an AVX-512 + VAES + SHA-NI CPU (jobs of 1420 B,
/// per packet, fastest of 1000 runs): HMAC-SHA-256 with AES-256-CBC sealed 1 job in 7.9 us on
/// AVX-512 against 2.7 us on SSE, 8 jobs in 1.12 against 0.97 us each, 10 in 0.92 against
/// 1.10, 32 in 0.58 against 0.96 (opening: 6.2 against 1.1 us for 1, 0.94 against 0.89 for 8,
/// 0.79 against 0.89 for 10); HMAC-SHA-1 with AES-128-CBC 4 jobs in 1.23 against 1.14 us, 5
/// in 1.02 against 1.09; HMAC-SHA-512 was faster on AVX-512 from one job on (SSE has no
/// SHA-512 extension). Other widest code paths keep every job (not measured).
fn wide_share(arch: &str, integ: IntegAlg, n: usize) -> usize {
    let (lanes, fewest) = match (arch, integ) {
        ("avx512", IntegAlg::HmacSha256_128) => (16, 10),
        ("avx512", IntegAlg::HmacSha1_96) => (16, 5),
        _ => return n,
    };
    let rest = n % lanes;
    if rest < fewest {
        n - rest
    } else {
        n
    }
}

/// [`super::cbc::seal_burst`] / [`super::cbc::open_burst`] on this thread's managers: `false`
/// (nothing done) when the thread has none. Jobs of other backends run one by one.
pub(super) fn burst(jobs: &mut [CbcJob<'_>], encrypt: bool) -> bool {
    let arch = ipsecmb::runtime().map_or("", |rt| rt.arch);
    BURST_MGR.with(|wide| {
        MGR.with(|narrow| {
            // SAFETY: this thread's initialised wide manager (or null, refused here); nothing
            // else on this thread uses it while the burst runs: the single-packet calls of
            // other backends' jobs do not touch ipsec-mb.
            let wide = unsafe { Lanes::of(wide.0) };
            // SAFETY: the same for this thread's narrow (SSE) manager.
            let narrow = unsafe { Lanes::of(narrow.0) };
            let (Some(wide), Some(narrow)) = (wide, narrow) else {
                return false;
            };
            for chunk in jobs.chunks_mut(CHUNK) {
                burst_chunk(&wide, &narrow, arch, chunk, encrypt);
            }
            true
        })
    })
}

/// A manager and its job entry points.
struct Lanes {
    mgr: *mut ffi::IMB_MGR,
    next: unsafe extern "C" fn(*mut ffi::IMB_MGR) -> *mut ffi::IMB_JOB,
    submit: unsafe extern "C" fn(*mut ffi::IMB_MGR) -> *mut ffi::IMB_JOB,
    flush: unsafe extern "C" fn(*mut ffi::IMB_MGR) -> *mut ffi::IMB_JOB,
}

impl Lanes {
    /// # Safety
    /// `mgr` is null or an initialised manager.
    unsafe fn of(mgr: *mut ffi::IMB_MGR) -> Option<Lanes> {
        if mgr.is_null() {
            return None;
        }
        // SAFETY: `mgr` is an initialised manager (the caller's contract); reading its
        // function pointers.
        let (next, submit, flush) =
            unsafe { ((*mgr).get_next_job, (*mgr).submit_job, (*mgr).flush_job) };
        Some(Lanes {
            mgr,
            next: next?,
            submit: submit?,
            flush: flush?,
        })
    }
}

/// Per job of a chunk: the ICV the manager computes, and (opening) the one received.
struct Scratch {
    computed: [[u8; MAX_ICV_LEN]; CHUNK],
    received: [[u8; MAX_ICV_LEN]; CHUNK],
}

fn integ_slot(integ: IntegAlg) -> usize {
    match integ {
        IntegAlg::HmacSha1_96 => 0,
        IntegAlg::HmacSha256_128 => 1,
        IntegAlg::HmacSha384_192 => 2,
        IntegAlg::HmacSha512_256 => 3,
    }
}

fn burst_chunk(wide: &Lanes, narrow: &Lanes, arch: &str, jobs: &mut [CbcJob<'_>], encrypt: bool) {
    let mut scratch = Scratch {
        computed: [[0; MAX_ICV_LEN]; CHUNK],
        received: [[0; MAX_ICV_LEN]; CHUNK],
    };
    // One base pointer for the managers' ICV outputs, so that reading a finished job's ICV
    // never makes a reference that overlaps a job still in flight.
    let computed = scratch.computed.as_mut_ptr();
    // How many of each HMAC's jobs go to the widest manager (the first ones); the rest to SSE.
    let mut wide_left = [0usize; 4];
    for j in jobs.iter().take(CHUNK) {
        if let Some(k) = j.imp.ipsecmb() {
            wide_left[integ_slot(k.integ)] += 1;
        }
    }
    for (slot, integ) in [
        IntegAlg::HmacSha1_96,
        IntegAlg::HmacSha256_128,
        IntegAlg::HmacSha384_192,
        IntegAlg::HmacSha512_256,
    ]
    .into_iter()
    .enumerate()
    {
        wide_left[slot] = wide_share(arch, integ, wide_left[slot]);
    }
    let mut in_flight = 0usize;
    for i in 0..jobs.len().min(CHUNK) {
        let j = &mut jobs[i];
        j.result = Err(CbcError::Backend);
        let Some(k) = j.imp.ipsecmb() else {
            j.result = if encrypt {
                j.imp.seal_in_place(j.esp, j.esn_hi)
            } else {
                j.imp.open_in_place(j.esp, j.esn_hi)
            };
            continue;
        };
        let icv_len = k.integ.icv_len();
        let prepared = ct_len(j.esp.len(), icv_len).and_then(|ct| {
            if !encrypt {
                let got = j.esp.get(CT_OFFSET + ct..).ok_or(CbcError::Length)?;
                scratch.received[i]
                    .get_mut(..icv_len)
                    .ok_or(CbcError::Length)?
                    .copy_from_slice(got);
            }
            let extra = put_esn_hi(j.esp, CT_OFFSET + ct, j.esn_hi)?;
            Ok((ct, extra))
        });
        let (ct, extra) = match prepared {
            Ok(v) => v,
            Err(e) => {
                j.result = Err(e);
                continue;
            }
        };
        let left = &mut wide_left[integ_slot(k.integ)];
        let lanes = if *left > 0 {
            *left -= 1;
            wide
        } else {
            narrow
        };
        let p = j.esp.as_mut_ptr();
        // The job reads and writes `j.esp` (checked by ct_len: header, IV, `ct` bytes of
        // ciphertext, then the ICV field that holds the ESN half and is not written by the
        // job) and its own slot of `computed`; the IV is in the packet. None of it is touched
        // until the job comes back (below or in the flushes), and both managers are this
        // thread's alone.
        // SAFETY: see above; `i < CHUNK`, so `computed.add(i)` is within the array.
        unsafe {
            let job = (lanes.next)(lanes.mgr);
            fill(
                &mut *job,
                k,
                p,
                Some((
                    CT_OFFSET,
                    ct,
                    p.add(CT_OFFSET - CBC_IV_LEN).cast_const(),
                    encrypt,
                )),
                CT_OFFSET + ct + extra,
                computed.add(i).cast(),
                icv_len,
            );
            (*job).user_data = i as *mut core::ffi::c_void;
            in_flight += 1;
            let done = (lanes.submit)(lanes.mgr);
            if !done.is_null() {
                in_flight -= 1;
                finish(done, jobs, computed, &scratch.received, encrypt);
            }
        }
    }
    for lanes in [wide, narrow] {
        // SAFETY: as above; flush hands back the jobs still in flight, oldest first.
        unsafe {
            loop {
                let done = (lanes.flush)(lanes.mgr);
                if done.is_null() {
                    break;
                }
                in_flight = in_flight.saturating_sub(1);
                finish(done, jobs, computed, &scratch.received, encrypt);
            }
        }
    }
    debug_assert_eq!(in_flight, 0, "every job came back");
    let used = jobs.len().min(CHUNK);
    wipe(&mut scratch.computed[..used]);
    if !encrypt {
        wipe(&mut scratch.received[..used]);
    }
}

/// Wipes ICV slots with one volatile store per slot. `zeroize` on the whole scratch wrote its
/// 4 KiB a byte at a time, about 1.2 us per burst: 6% of sealing 32 packets of 1420 B with
/// AES-256-CBC + HMAC-SHA-256 (`esp-ratio` in `benches/aead.rs`, against the raw job API).
fn wipe(slots: &mut [[u8; MAX_ICV_LEN]]) {
    for s in slots {
        // SAFETY: `s` is a live, exclusive, aligned reference to a plain byte array.
        unsafe { ptr::write_volatile(s, [0; MAX_ICV_LEN]) };
    }
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
}

/// A job came back: check its status, write (sealing) or compare (opening) its ICV.
///
/// # Safety
/// `done` is a finished job from the burst manager whose `user_data` is the index of its
/// packet in `jobs`, and whose ICV the manager wrote at `computed + index`.
unsafe fn finish(
    done: *mut ffi::IMB_JOB,
    jobs: &mut [CbcJob<'_>],
    computed: *mut [u8; MAX_ICV_LEN],
    received: &[[u8; MAX_ICV_LEN]; CHUNK],
    encrypt: bool,
) {
    // SAFETY: `done` is a finished job (the caller's contract).
    let (i, ok) = unsafe {
        (
            (*done).user_data as usize,
            (*done).status.0 == ffi::IMB_STATUS::IMB_STATUS_COMPLETED.0,
        )
    };
    let (Some(j), Some(rx)) = (jobs.get_mut(i), received.get(i)) else {
        return;
    };
    let Some(k) = j.imp.ipsecmb() else {
        return;
    };
    let icv_len = k.integ.icv_len();
    // SAFETY: the manager is done with slot `i` (the caller's contract), `i < CHUNK`.
    let icv = unsafe { &*computed.add(i) };
    let icv = &icv[..icv_len.min(MAX_ICV_LEN)];
    let Ok(ct) = ct_len(j.esp.len(), icv_len) else {
        return;
    };
    j.result = if !ok {
        Err(CbcError::Backend)
    } else if encrypt {
        match j.esp.get_mut(CT_OFFSET + ct..) {
            Some(out) if out.len() == icv.len() => {
                out.copy_from_slice(icv);
                Ok(())
            }
            _ => Err(CbcError::Length),
        }
    } else if icv_equal(icv, &rx[..icv.len()]) {
        Ok(())
    } else {
        Err(CbcError::Auth)
    };
    if !encrypt && j.result.is_err() {
        // The job decrypted whatever arrived: leave none of it behind.
        if let Some(pt) = j.esp.get_mut(CT_OFFSET..CT_OFFSET + ct) {
            pt.zeroize();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whole passes of 16 lanes stay wide; a remainder too small to pay for a pass goes to
    /// SSE; SHA-384/512 and other code paths keep every job wide.
    #[test]
    fn wide_share_keeps_whole_passes_and_sends_small_remainders_to_sse() {
        let sha256 = |n| wide_share("avx512", IntegAlg::HmacSha256_128, n);
        let sha1 = |n| wide_share("avx512", IntegAlg::HmacSha1_96, n);
        assert_eq!(
            [0, 1, 9, 10, 16, 20, 25, 26, 32, 64].map(sha256),
            [0, 0, 0, 10, 16, 16, 16, 26, 32, 64]
        );
        assert_eq!(
            [1, 4, 5, 16, 20, 21, 33].map(sha1),
            [0, 0, 5, 16, 16, 21, 32]
        );
        for n in [1, 3, 17] {
            assert_eq!(wide_share("avx512", IntegAlg::HmacSha512_256, n), n);
            assert_eq!(wide_share("avx512", IntegAlg::HmacSha384_192, n), n);
            assert_eq!(wide_share("avx2", IntegAlg::HmacSha256_128, n), n);
        }
    }
}
