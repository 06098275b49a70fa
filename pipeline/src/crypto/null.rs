//! The `Null` backend: no encryption, zero tag, every tag accepted. Benchmarks only.

use super::{Aead, AeadAlg, AuthError, Backend, NONCE_LEN, TAG_LEN};

#[derive(Debug)]
pub(super) struct NullAead {
    alg: AeadAlg,
}

impl NullAead {
    pub(super) fn new(alg: AeadAlg) -> Self {
        Self { alg }
    }
}

impl Aead for NullAead {
    fn backend(&self) -> Backend {
        Backend::Null
    }

    fn alg(&self) -> AeadAlg {
        self.alg
    }

    fn state_bytes(&self) -> usize {
        core::mem::size_of::<Self>()
    }

    fn seal_in_place(&self, _: &[u8; NONCE_LEN], _: &[u8], _: &mut [u8], tag: &mut [u8; TAG_LEN]) {
        *tag = [0; TAG_LEN];
    }

    fn open_in_place(
        &self,
        _: &[u8; NONCE_LEN],
        _: &[u8],
        _: &mut [u8],
        _: &[u8; TAG_LEN],
    ) -> Result<(), AuthError> {
        Ok(())
    }
}
