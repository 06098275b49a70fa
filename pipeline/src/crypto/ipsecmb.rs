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

/// One AES-GCM key on the ipsec-mb backend.
pub(super) struct IpsecMbGcm {
    alg: AeadAlg,
    /// Expanded key + GHASH tables; `gcm_key_data` is `align(64)`, which `Box` honours.
    key: Box<gcm_key_data>,
    enc: EncDecFn,
    dec: EncDecFn,
}

impl IpsecMbGcm {
    /// Expands `key`. Returns `None` if the backend is unavailable.
    ///
    /// # Panics
    /// If `key.len() != alg.key_len()` (checked by `new_aead` before).
    pub(super) fn new(alg: AeadAlg, key: &[u8]) -> Option<Self> {
        assert_eq!(key.len(), alg.key_len(), "key length checked by new_aead");
        let rt = runtime()?;
        let (pre, enc, dec) = match alg {
            AeadAlg::AesGcm128 => (rt.pre128, rt.enc128, rt.dec128),
            AeadAlg::AesGcm256 => (rt.pre256, rt.enc256, rt.dec256),
        };
        let mut kd: Box<gcm_key_data> = Box::default();
        // SAFETY: `pre` is the gcmXXX_pre entry point matching `alg`; it reads exactly
        // alg.key_len() bytes from `key` (asserted above) and writes only into `*kd`, a valid,
        // exclusively borrowed, 64-byte-aligned gcm_key_data.
        unsafe { pre(key.as_ptr().cast(), &mut *kd) };
        Some(Self {
            alg,
            key: kd,
            enc,
            dec,
        })
    }
}

impl Drop for IpsecMbGcm {
    fn drop(&mut self) {
        // SAFETY: gcm_key_data consists only of u8 arrays (and a union of u8 arrays): no
        // pointers, no Drop impls, all-zero is a valid value. The pointer comes from a live
        // `&mut`, so it is non-null, exclusive and covers size_of::<gcm_key_data>() bytes.
        unsafe { zeroize::zeroize_flat_type(&mut *self.key as *mut gcm_key_data) };
    }
}

impl fmt::Debug for IpsecMbGcm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IpsecMbGcm")
            .field("alg", &self.alg)
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

impl Aead for IpsecMbGcm {
    fn backend(&self) -> Backend {
        Backend::IpsecMb
    }

    fn alg(&self) -> AeadAlg {
        self.alg
    }

    fn warm(&self) -> u8 {
        // The AES round keys (240 bytes, four lines), which every packet reads in full. The
        // GHASH key powers a packet needs depend on its length; reading all twelve lines of
        // them cost more than it saved at 1000 SAs (L2/L3 hits).
        let mut x = 0u8;
        for line in self.key.expanded_keys.iter().step_by(64) {
            x ^= *line;
        }
        x
    }

    fn state_bytes(&self) -> usize {
        core::mem::size_of::<Self>() + core::mem::size_of::<gcm_key_data>()
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
        // `self.enc` is the gcmXXX_enc matching the key size of `self.key` (expanded by the
        // matching gcmXXX_pre). The library reads/writes exactly `buf.len()` bytes at `p`
        // (in place, dst == src, is supported), reads 12 bytes of nonce and `aad.len()` of
        // AAD, writes TAG_LEN bytes of tag, and uses `ctx` as scratch.
        // SAFETY: all pointers come from live references of at least those lengths (an empty
        // slice's dangling pointer is never dereferenced since its length is 0).
        unsafe {
            (self.enc)(
                &*self.key,
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
        // SAFETY: as in seal_in_place, with the matching gcmXXX_dec; the computed tag is
        // written to the local `computed` array of TAG_LEN bytes.
        unsafe {
            (self.dec)(
                &*self.key,
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
