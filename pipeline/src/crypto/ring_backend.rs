//! The ring backend (`ring::aead::LessSafeKey`), portable and always compiled in.
//!
//! Note: ring does not zeroize its AES key schedule / GHASH table when the key is dropped, so
//! expanded key material may linger in freed heap memory. Prefer ipsec-mb where available.

use std::fmt;

use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_128_GCM, AES_256_GCM};
use zeroize::Zeroize;

use super::{Aead, AeadAlg, AuthError, Backend, NONCE_LEN, TAG_LEN};

pub(super) struct RingGcm {
    alg: AeadAlg,
    key: LessSafeKey,
}

impl RingGcm {
    /// `key` must already have been checked to be `alg.key_len()` bytes.
    pub(super) fn new(alg: AeadAlg, key: &[u8]) -> Self {
        let algorithm = match alg {
            AeadAlg::AesGcm128 => &AES_128_GCM,
            AeadAlg::AesGcm256 => &AES_256_GCM,
        };
        let unbound = UnboundKey::new(algorithm, key).expect("key length checked by new_aead");
        Self {
            alg,
            key: LessSafeKey::new(unbound),
        }
    }
}

impl fmt::Debug for RingGcm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingGcm")
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl Aead for RingGcm {
    fn backend(&self) -> Backend {
        Backend::Ring
    }

    fn alg(&self) -> AeadAlg {
        self.alg
    }

    fn state_bytes(&self) -> usize {
        core::mem::size_of::<Self>()
    }

    fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &mut [u8; TAG_LEN],
    ) {
        let t = self
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), buf)
            // ring only fails for inputs beyond GCM's length limit (~64 GiB).
            .expect("AES-GCM input exceeds the GCM length limit");
        tag.copy_from_slice(t.as_ref());
    }

    fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AuthError> {
        // ring compares the tag in constant time.
        match self.key.open_in_place_separate_tag(
            Nonce::assume_unique_for_key(*nonce),
            Aad::from(aad),
            Tag::from(*tag),
            buf,
            0..,
        ) {
            Ok(_) => Ok(()),
            Err(_) => {
                // ring already clears the output on failure; do it ourselves so the contract
                // does not depend on a ring implementation detail.
                buf.zeroize();
                Err(AuthError)
            }
        }
    }
}
