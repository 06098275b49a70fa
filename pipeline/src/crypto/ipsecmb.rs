//! The intel-ipsec-mb backend: AES-GCM through the library's direct (single-buffer) API.
//!
//! One `IMB_MGR` is allocated and initialised per process ([`runtime`], `OnceLock`) with
//! `init_mb_mgr_auto`, which picks the best code path for the CPU. The direct GCM functions
//! (`IMB_AES128_GCM_ENC` = `mgr->gcm128_enc`, ...) are stateless with respect to the manager,
//! so their function pointers are copied out once and then called from any thread. Per key,
//! the expanded AES key and GHASH tables (`gcm_key_data`, 64-byte aligned) live in a heap box
//! that is zeroized on drop; each call uses a stack `gcm_context_data` that is wiped afterwards.
//!
//! This is the only module of the crate allowed to use `unsafe`.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::fmt;
use std::sync::OnceLock;

use ipsecmb_sys as ffi;
use ipsecmb_sys::{gcm_context_data, gcm_key_data};
use zeroize::Zeroize;

use super::{tags_equal, Aead, AeadAlg, AuthError, Backend, NONCE_LEN, TAG_LEN};

/// `aes_gcm_pre_t` without the `Option`: expands a raw key into `gcm_key_data`.
type PreFn = unsafe extern "C" fn(*const c_void, *mut gcm_key_data);
/// `aes_gcm_enc_dec_t` without the `Option`:
/// (key, ctx, out, in, len, iv, aad, aad_len, tag, tag_len).
type EncDecFn = unsafe extern "C" fn(
    *const gcm_key_data,
    *mut gcm_context_data,
    *mut u8,
    *const u8,
    u64,
    *const u8,
    *const u8,
    u64,
    *mut u8,
    u64,
);

/// The process-wide ipsec-mb state: which arch was selected and the GCM entry points.
pub(super) struct Runtime {
    /// Code path chosen by `init_mb_mgr_auto` ("sse", "avx", "avx2", "avx512").
    pub(super) arch: &'static str,
    pre128: PreFn,
    pre256: PreFn,
    enc128: EncDecFn,
    dec128: EncDecFn,
    enc256: EncDecFn,
    dec256: EncDecFn,
}

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

/// The initialised ipsec-mb runtime, or `None` if the CPU or library cannot provide it.
pub(super) fn runtime() -> Option<&'static Runtime> {
    RUNTIME.get_or_init(init).as_ref().ok()
}

/// Why the ipsec-mb backend is unavailable, if it is (start-up line, tests).
pub(super) fn unavailable_reason() -> Option<&'static str> {
    RUNTIME.get_or_init(init).as_ref().err().map(String::as_str)
}

fn cpu_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn init() -> Result<Runtime, String> {
    if !cpu_supported() {
        return Err("CPU lacks AES-NI or PCLMULQDQ".into());
    }
    // SAFETY: alloc_mb_mgr has no preconditions; it returns NULL on allocation failure, which
    // is checked below. Flags 0 = use every CPU feature the library detects.
    let mgr = unsafe { ffi::alloc_mb_mgr(0) };
    if mgr.is_null() {
        return Err("alloc_mb_mgr failed".into());
    }
    let mut arch = ffi::IMB_ARCH::IMB_ARCH_NONE;
    // SAFETY: `mgr` is a non-null manager freshly returned by alloc_mb_mgr and not shared with
    // anyone; `arch` is a valid, writable IMB_ARCH.
    unsafe { ffi::init_mb_mgr_auto(mgr, &mut arch) };
    // SAFETY: `mgr` is a valid manager (see above).
    let errno = unsafe { ffi::imb_get_errno(mgr) };
    if errno != 0 {
        // SAFETY: imb_get_strerror returns a pointer to a static NUL-terminated string for any
        // errno value (or NULL, checked).
        let msg = unsafe {
            let p = ffi::imb_get_strerror(errno);
            if p.is_null() {
                String::from("unknown error")
            } else {
                std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        // SAFETY: `mgr` came from alloc_mb_mgr and is not used after this.
        unsafe { ffi::free_mb_mgr(mgr) };
        return Err(format!("init_mb_mgr_auto failed: {msg} ({errno})"));
    }
    let arch_name = match arch {
        ffi::IMB_ARCH::IMB_ARCH_SSE => Some("sse"),
        ffi::IMB_ARCH::IMB_ARCH_AVX => Some("avx"),
        ffi::IMB_ARCH::IMB_ARCH_AVX2 => Some("avx2"),
        ffi::IMB_ARCH::IMB_ARCH_AVX512 => Some("avx512"),
        // IMB_ARCH_NOAESNI (software AES) would be slower than ring and is not constant time.
        _ => None,
    };
    // SAFETY: `mgr` is valid, initialised, and exclusively ours; we only read the function
    // pointer fields (plain `Option<fn>` values, valid for any bit pattern set by the library).
    let m = unsafe { &*mgr };
    let rt = match (
        arch_name,
        m.gcm128_pre,
        m.gcm256_pre,
        m.gcm128_enc,
        m.gcm128_dec,
        m.gcm256_enc,
        m.gcm256_dec,
    ) {
        (
            Some(arch),
            Some(pre128),
            Some(pre256),
            Some(enc128),
            Some(dec128),
            Some(enc256),
            Some(dec256),
        ) => Ok(Runtime {
            arch,
            pre128,
            pre256,
            enc128,
            dec128,
            enc256,
            dec256,
        }),
        (None, ..) => Err(format!("unsupported ipsec-mb arch {}", arch.0)),
        _ => Err("ipsec-mb manager lacks GCM entry points".into()),
    };
    if rt.is_err() {
        // SAFETY: `mgr` came from alloc_mb_mgr; `m` is not used after this.
        unsafe { ffi::free_mb_mgr(mgr) };
    }
    // On success the manager is deliberately never freed: it is process-wide state that lives
    // as long as the function pointers copied out of it are in use.
    rt
}

/// One AES-GCM key on the ipsec-mb backend: the expanded key and GHASH tables and nothing
/// else (`AES256` selects the key size). The entry points are process-wide (the runtime's), so
/// a packet reads no line of the key state but the round keys and the GHASH powers its length
/// needs, and each SA's key state is `gcm_key_data` alone (1 KiB, 64-byte aligned: `Box`
/// honours the alignment).
#[repr(C)]
pub(super) struct IpsecMbGcm<const AES256: bool> {
    key: gcm_key_data,
}

/// Expands `key` for `alg`. Returns `None` if the backend is unavailable.
///
/// # Panics
/// If `key.len() != alg.key_len()` (checked by `new_aead` before).
pub(super) fn new_gcm(alg: AeadAlg, key: &[u8]) -> Option<Box<dyn Aead>> {
    Some(match alg {
        AeadAlg::AesGcm128 => IpsecMbGcm::<false>::new(key)? as Box<dyn Aead>,
        AeadAlg::AesGcm256 => IpsecMbGcm::<true>::new(key)? as Box<dyn Aead>,
    })
}

impl<const AES256: bool> IpsecMbGcm<AES256> {
    const ALG: AeadAlg = if AES256 {
        AeadAlg::AesGcm256
    } else {
        AeadAlg::AesGcm128
    };

    /// Expands `key`. Returns `None` if the backend is unavailable.
    ///
    /// # Panics
    /// If `key.len() != Self::ALG.key_len()` (checked by `new_aead` before).
    fn new(key: &[u8]) -> Option<Box<Self>> {
        assert_eq!(
            key.len(),
            Self::ALG.key_len(),
            "key length checked by new_aead"
        );
        let rt = runtime()?;
        let pre = if AES256 { rt.pre256 } else { rt.pre128 };
        let mut me = Box::new(Self {
            key: gcm_key_data::default(),
        });
        // SAFETY: `pre` is the gcmXXX_pre entry point matching `Self::ALG`; it reads exactly
        // ALG.key_len() bytes from `key` (asserted above) and writes only into `me.key`, a
        // valid, exclusively borrowed, 64-byte-aligned gcm_key_data.
        unsafe { pre(key.as_ptr().cast(), &mut me.key) };
        Some(me)
    }

    /// The encrypt and decrypt entry points of this key size.
    #[inline(always)]
    fn entry() -> (EncDecFn, EncDecFn) {
        // A key exists only after `new` found the runtime initialised, and an initialised
        // `OnceLock` stays so: this cannot fail.
        let rt = RUNTIME
            .get()
            .and_then(|r| r.as_ref().ok())
            .expect("ipsec-mb runtime initialised before its first key");
        if AES256 {
            (rt.enc256, rt.dec256)
        } else {
            (rt.enc128, rt.dec128)
        }
    }

    /// The byte ranges of `gcm_key_data` a seal or open of `len` bytes reads, as measured
    /// for the code path in use (see the test `key_data_lines_read`): the round keys, and the
    /// GHASH key powers it multiplies with.
    fn hot_key_bytes(len: usize) -> [(usize, usize); 2] {
        let rounds = if AES256 { 15 * 16 } else { 11 * 16 };
        // Blocks of ciphertext plus the AAD and length blocks.
        let blocks = len.div_ceil(16) + 2;
        [(0, rounds), hkey_span(blocks)]
    }
}

/// Where in `gcm_key_data` the powers H^1..H^blocks (capped at what the layout holds) lie,
/// for the layout of the code path in use: offset and length.
fn hkey_span(blocks: usize) -> (usize, usize) {
    const HKEYS: usize = 16 * 15;
    match runtime().map(|rt| rt.arch) {
        // VAES (avx512): H^48 first, H^1 last; the multiply-by-powers loops read the top
        // `blocks` powers, the tail of the table.
        Some("avx512") => {
            let n = blocks.min(48);
            (HKEYS + 16 * (48 - n), 16 * n)
        }
        // SSE/AVX/AVX2: H^1 first, 8 powers (and SSE/AVX the Karatsuba halves after them).
        _ => (HKEYS, 16 * blocks.min(8)),
    }
}

impl<const AES256: bool> Drop for IpsecMbGcm<AES256> {
    fn drop(&mut self) {
        // SAFETY: gcm_key_data consists only of u8 arrays (and a union of u8 arrays): no
        // pointers, no Drop impls, all-zero is a valid value. The pointer comes from a live
        // `&mut`, so it is non-null, exclusive and covers size_of::<gcm_key_data>() bytes.
        unsafe { zeroize::zeroize_flat_type(&mut self.key as *mut gcm_key_data) };
    }
}

impl<const AES256: bool> fmt::Debug for IpsecMbGcm<AES256> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IpsecMbGcm")
            .field("alg", &Self::ALG)
            .finish_non_exhaustive()
    }
}

/// Wipes the per-call GCM context (it holds E(K, Y0) and GHASH state): one volatile store of
/// the whole 88-byte struct, which the compiler may neither drop nor split into byte stores
/// (field-by-field `zeroize` wrote it a byte at a time: ~5% of a 64-byte packet's cost).
#[inline]
fn wipe(ctx: &mut gcm_context_data) {
    // SAFETY: `ctx` is a live, exclusive, aligned reference; gcm_context_data is plain old
    // data (integers and byte arrays) for which all-zero is a valid value.
    unsafe { core::ptr::write_volatile(ctx, gcm_context_data::default()) };
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
}

impl<const AES256: bool> Aead for IpsecMbGcm<AES256> {
    fn backend(&self) -> Backend {
        Backend::IpsecMb
    }

    fn alg(&self) -> AeadAlg {
        Self::ALG
    }

    #[inline]
    fn prefetch(&self, len: usize) {
        // The round keys and the GHASH powers a packet of this length reads: 5 lines at
        // 64 B (AES-128, VAES) instead of the whole 1 KiB.
        for (at, n) in Self::hot_key_bytes(len) {
            crate::prefetch::range(&self.key, at, n);
        }
    }

    fn state_bytes(&self) -> usize {
        core::mem::size_of::<Self>()
    }

    #[inline]
    fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &mut [u8; TAG_LEN],
    ) {
        let mut ctx = gcm_context_data::default();
        let p = buf.as_mut_ptr();
        let (enc, _) = Self::entry();
        // `enc` is the gcmXXX_enc matching the key size of `self.key` (expanded by the
        // matching gcmXXX_pre). The library reads/writes exactly `buf.len()` bytes at `p`
        // (in place, dst == src, is supported), reads 12 bytes of nonce and `aad.len()` of
        // AAD, writes TAG_LEN bytes of tag, and uses `ctx` as scratch.
        // SAFETY: all pointers come from live references of at least those lengths (an empty
        // slice's dangling pointer is never dereferenced since its length is 0).
        unsafe {
            enc(
                &self.key,
                &mut ctx,
                p,
                p,
                buf.len() as u64,
                nonce.as_ptr(),
                aad.as_ptr(),
                aad.len() as u64,
                tag.as_mut_ptr(),
                TAG_LEN as u64,
            )
        };
        wipe(&mut ctx);
    }

    #[inline]
    fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AuthError> {
        let mut ctx = gcm_context_data::default();
        let mut computed = [0u8; TAG_LEN];
        let p = buf.as_mut_ptr();
        let (_, dec) = Self::entry();
        // SAFETY: as in seal_in_place, with the matching gcmXXX_dec; the computed tag is
        // written to the local `computed` array of TAG_LEN bytes.
        unsafe {
            dec(
                &self.key,
                &mut ctx,
                p,
                p,
                buf.len() as u64,
                nonce.as_ptr(),
                aad.as_ptr(),
                aad.len() as u64,
                computed.as_mut_ptr(),
                TAG_LEN as u64,
            )
        };
        wipe(&mut ctx);
        if tags_equal(&computed, tag) {
            Ok(())
        } else {
            buf.zeroize();
            Err(AuthError)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 64-byte lines of `gcm_key_data` whose contents change what a seal of `len` bytes
    /// (with 8 bytes of AAD, as ESP without ESN) produces: the lines the code path in use
    /// reads. Each line in turn is overwritten with garbage and the output compared.
    fn lines_read<const W: bool>(len: usize) -> Vec<usize> {
        let k = [0x42u8; 32];
        let alg = IpsecMbGcm::<W>::ALG;
        let g = IpsecMbGcm::<W>::new(&k[..alg.key_len()]).expect("ipsec-mb available");
        let (enc, _) = IpsecMbGcm::<W>::entry();
        let seal = |kd: &gcm_key_data| {
            let mut buf: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut tag = [0u8; TAG_LEN];
            let mut ctx = gcm_context_data::default();
            let (nonce, aad) = ([7u8; NONCE_LEN], [9u8; 8]);
            let p = buf.as_mut_ptr();
            // SAFETY: as in `seal_in_place`: `enc` matches the key size `kd` was expanded
            // for, and every pointer covers the length passed with it.
            unsafe {
                enc(
                    kd,
                    &mut ctx,
                    p,
                    p,
                    len as u64,
                    nonce.as_ptr(),
                    aad.as_ptr(),
                    aad.len() as u64,
                    tag.as_mut_ptr(),
                    TAG_LEN as u64,
                )
            };
            (buf, tag)
        };
        let reference = seal(&g.key);
        let size = core::mem::size_of::<gcm_key_data>();
        (0..size / 64)
            .filter(|line| {
                let mut kd = g.key;
                // SAFETY: gcm_key_data is plain bytes (u8 arrays and a union of them), so any
                // bytes are a valid value; the slice covers exactly the local copy.
                let bytes = unsafe {
                    core::slice::from_raw_parts_mut(
                        (&mut kd as *mut gcm_key_data).cast::<u8>(),
                        size,
                    )
                };
                for b in &mut bytes[line * 64..(line + 1) * 64] {
                    *b ^= 0xa5;
                }
                seal(&kd) != reference
            })
            .collect()
    }

    /// The lines `IpsecMbGcm::prefetch` covers for `len` bytes, relative to the key data
    /// (which is the whole of the key state: a prefetch reaches nothing else).
    fn lines_prefetched<const W: bool>(len: usize) -> Vec<usize> {
        let mut v: Vec<usize> = IpsecMbGcm::<W>::hot_key_bytes(len)
            .iter()
            .flat_map(|&(at, n)| (at / 64)..(at + n).div_ceil(64))
            .collect();
        v.dedup();
        v
    }

    #[test]
    fn key_state_is_the_key_data_alone() {
        assert_eq!(
            core::mem::size_of::<IpsecMbGcm<false>>(),
            core::mem::size_of::<gcm_key_data>()
        );
        assert_eq!(core::mem::align_of::<IpsecMbGcm<true>>(), 64);
    }

    /// What the prefetch of a packet's key data covers every line the library reads for it
    /// (the layout of the GHASH key powers differs between code paths, and a prefetch of the
    /// wrong lines would leave the real ones to miss).
    #[test]
    fn key_data_lines_read_are_prefetched() {
        if runtime().is_none() {
            eprintln!("skipped: ipsec-mb unavailable here");
            return;
        }
        let arch = runtime().map(|r| r.arch).unwrap_or("-");
        for alg in [AeadAlg::AesGcm128, AeadAlg::AesGcm256] {
            // 64 B and 1420 B frames, as ESP payloads, and the sizes between.
            for len in [1, 16, 52, 64, 100, 256, 500, 1024, 1408] {
                let (read, pre) = match alg {
                    AeadAlg::AesGcm128 => {
                        (lines_read::<false>(len), lines_prefetched::<false>(len))
                    }
                    AeadAlg::AesGcm256 => (lines_read::<true>(len), lines_prefetched::<true>(len)),
                };
                println!("{arch} {alg} {len} B: reads lines {read:?}, prefetches {pre:?}");
                let missed: Vec<_> = read.iter().filter(|l| !pre.contains(l)).collect();
                assert!(
                    missed.is_empty(),
                    "{arch} {alg} {len} B: lines {missed:?} not prefetched"
                );
            }
        }
    }
}
