//! The portable AES-CBC + HMAC backend ([`Backend::Ring`]): RustCrypto's `aes` for the block
//! cipher (AES-NI when the CPU has it, a constant-time bitsliced implementation otherwise;
//! its key schedules are zeroized on drop) with the CBC chaining written out here, and ring's
//! HMAC (assembly SHA-1/SHA-2, already the crate's fallback AEAD) for the ICV.
//!
//! Why not the `cbc` crate: its encryptor takes the block cipher by value per IV, which would
//! copy the key schedule for every packet; chaining is a few lines. ring has no AES-CBC.
//!
//! Note: ring does not zeroize the HMAC's inner and outer hash states when the key is
//! dropped (as for its GCM keys); prefer ipsec-mb where available.

use std::fmt;

use aes::cipher::consts::U16;
use aes::cipher::{BlockDecrypt, BlockEncrypt, BlockSizeUser, KeyInit};
use aes::Block;
use ring::hmac;
use zeroize::Zeroize;

use super::cbc::{
    ct_len, icv_equal, CbcError, CbcHmac, BLOCK_LEN, CT_OFFSET, HEADER_LEN, MAX_ICV_LEN,
};
use super::{Backend, CbcAlg, IntegAlg};

// The whole key already lives in one heap box (`Box<dyn CbcHmac>`); boxing a variant too
// would add a pointer chase per packet to save 256 bytes of an AES-128 key.
#[allow(clippy::large_enum_variant)]
enum AesKey {
    A128(aes::Aes128),
    A256(aes::Aes256),
}

pub(super) struct PortableCbcHmac {
    cipher: CbcAlg,
    integ: IntegAlg,
    aes: AesKey,
    hmac: hmac::Key,
}

impl PortableCbcHmac {
    /// Key lengths must already have been checked by `new_cbc_hmac`.
    pub(super) fn new(cipher: CbcAlg, key: &[u8], integ: IntegAlg, integ_key: &[u8]) -> Self {
        let aes = match cipher {
            CbcAlg::AesCbc128 => AesKey::A128(
                aes::Aes128::new_from_slice(key).expect("key length checked by new_cbc_hmac"),
            ),
            CbcAlg::AesCbc256 => AesKey::A256(
                aes::Aes256::new_from_slice(key).expect("key length checked by new_cbc_hmac"),
            ),
        };
        let alg = match integ {
            IntegAlg::HmacSha1_96 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            IntegAlg::HmacSha256_128 => hmac::HMAC_SHA256,
            IntegAlg::HmacSha384_192 => hmac::HMAC_SHA384,
            IntegAlg::HmacSha512_256 => hmac::HMAC_SHA512,
        };
        Self {
            cipher,
            integ,
            aes,
            hmac: hmac::Key::new(alg, integ_key),
        }
    }

    /// The full ICV over SPI..ciphertext (|| ESN high bits), truncated into `out`.
    fn icv(&self, authed: &[u8], esn_hi: Option<u32>, out: &mut [u8]) {
        let mut ctx = hmac::Context::with_key(&self.hmac);
        ctx.update(authed);
        if let Some(hi) = esn_hi {
            ctx.update(&hi.to_be_bytes());
        }
        let tag = ctx.sign();
        for (o, t) in out.iter_mut().zip(tag.as_ref()) {
            *o = *t;
        }
    }
}

impl fmt::Debug for PortableCbcHmac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PortableCbcHmac")
            .field("cipher", &self.cipher)
            .field("integ", &self.integ)
            .finish_non_exhaustive()
    }
}

fn cbc_encrypt<C: BlockEncrypt + BlockSizeUser<BlockSize = U16>>(
    c: &C,
    iv: &[u8; BLOCK_LEN],
    data: &mut [u8],
) {
    let mut prev = *iv;
    for chunk in data.chunks_exact_mut(BLOCK_LEN) {
        let mut block = Block::default();
        for ((b, p), x) in block.iter_mut().zip(prev).zip(chunk.iter()) {
            *b = p ^ x;
        }
        c.encrypt_block(&mut block);
        chunk.copy_from_slice(&block);
        prev.copy_from_slice(&block);
    }
}

/// Blocks decrypted per call: AES-NI pipelines independent blocks, and CBC decryption's
/// blocks are independent.
const PAR_BLOCKS: usize = 8;

fn cbc_decrypt<C: BlockDecrypt + BlockSizeUser<BlockSize = U16>>(
    c: &C,
    iv: &[u8; BLOCK_LEN],
    data: &mut [u8],
) {
    let mut prev = Block::from(*iv);
    for chunk in data.chunks_mut(PAR_BLOCKS * BLOCK_LEN) {
        let mut ct = [Block::default(); PAR_BLOCKS];
        let mut n = 0;
        for (b, src) in ct.iter_mut().zip(chunk.chunks_exact(BLOCK_LEN)) {
            b.copy_from_slice(src);
            n += 1;
        }
        let Some(ct) = ct.get(..n) else { return };
        let mut pt = [Block::default(); PAR_BLOCKS];
        let Some(pt) = pt.get_mut(..n) else { return };
        pt.copy_from_slice(ct);
        c.decrypt_blocks(pt);
        for ((dst, p), c) in chunk.chunks_exact_mut(BLOCK_LEN).zip(pt.iter()).zip(ct) {
            for ((d, x), y) in dst.iter_mut().zip(p.iter()).zip(prev.iter()) {
                *d = x ^ y;
            }
            prev = *c;
        }
    }
}

impl CbcHmac for PortableCbcHmac {
    fn backend(&self) -> Backend {
        Backend::Ring
    }

    fn alg(&self) -> (CbcAlg, IntegAlg) {
        (self.cipher, self.integ)
    }

    fn state_bytes(&self) -> usize {
        core::mem::size_of::<Self>()
    }

    fn seal_in_place(&self, esp: &mut [u8], esn_hi: Option<u32>) -> Result<(), CbcError> {
        let icv_len = self.integ.icv_len();
        let n = ct_len(esp.len(), icv_len)?;
        let (authed, icv) = esp.split_at_mut(CT_OFFSET + n);
        let (hdr, ct) = authed.split_at_mut(CT_OFFSET);
        let Some(Ok(iv)) = hdr.get(HEADER_LEN..).map(<[u8; BLOCK_LEN]>::try_from) else {
            return Err(CbcError::Length);
        };
        match &self.aes {
            AesKey::A128(k) => cbc_encrypt(k, &iv, ct),
            AesKey::A256(k) => cbc_encrypt(k, &iv, ct),
        }
        self.icv(authed, esn_hi, icv);
        Ok(())
    }

    fn open_in_place(&self, esp: &mut [u8], esn_hi: Option<u32>) -> Result<(), CbcError> {
        let icv_len = self.integ.icv_len();
        let n = ct_len(esp.len(), icv_len)?;
        let (authed, icv) = esp.split_at_mut(CT_OFFSET + n);
        let mut computed = [0u8; MAX_ICV_LEN];
        let Some(computed) = computed.get_mut(..icv_len) else {
            return Err(CbcError::Length);
        };
        self.icv(authed, esn_hi, computed);
        let ok = icv_equal(computed, icv);
        computed.zeroize();
        if !ok {
            return Err(CbcError::Auth);
        }
        let (hdr, ct) = authed.split_at_mut(CT_OFFSET);
        let Some(Ok(iv)) = hdr.get(HEADER_LEN..).map(<[u8; BLOCK_LEN]>::try_from) else {
            return Err(CbcError::Length);
        };
        match &self.aes {
            AesKey::A128(k) => cbc_decrypt(k, &iv, ct),
            AesKey::A256(k) => cbc_decrypt(k, &iv, ct),
        }
        Ok(())
    }

    #[cfg(test)]
    fn hmac_only(&self, data: &mut [u8], icv: &mut [u8]) -> Result<(), CbcError> {
        self.icv(data, None, icv);
        Ok(())
    }

    #[cfg(test)]
    fn cbc_only(&self, iv: &[u8; 16], data: &mut [u8], encrypt: bool) -> Result<(), CbcError> {
        if data.len() % BLOCK_LEN != 0 {
            return Err(CbcError::Length);
        }
        match (&self.aes, encrypt) {
            (AesKey::A128(k), true) => cbc_encrypt(k, iv, data),
            (AesKey::A256(k), true) => cbc_encrypt(k, iv, data),
            (AesKey::A128(k), false) => cbc_decrypt(k, iv, data),
            (AesKey::A256(k), false) => cbc_decrypt(k, iv, data),
        }
        Ok(())
    }
}
