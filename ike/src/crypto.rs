//! IKEv2 cryptography (RFC 7296 section 2.13-2.18, RFC 5282): the PRFs and prf+, key
//! derivation, Diffie-Hellman (x25519, ecp256, modp2048) and the encrypted payload with
//! AES-GCM-16.
//!
//! Randomness always comes from the caller's RNG (sans-IO: the core is deterministic for a
//! given seed). Secrets live in zeroizing buffers and never reach `Debug`.

use num_bigint::BigUint;
use rand_core::{CryptoRng, RngCore};
use ring::{aead, hmac};
use zeroize::{Zeroize, Zeroizing};

use crate::wire::transform;

/// A secret byte string (zeroized on drop, never printed).
pub type Secret = Zeroizing<Vec<u8>>;

/// The negotiated pseudo-random function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prf {
    HmacSha256,
    HmacSha384,
    HmacSha512,
}

impl Prf {
    pub fn from_id(id: u16) -> Option<Prf> {
        match id {
            transform::PRF_HMAC_SHA2_256 => Some(Prf::HmacSha256),
            transform::PRF_HMAC_SHA2_384 => Some(Prf::HmacSha384),
            transform::PRF_HMAC_SHA2_512 => Some(Prf::HmacSha512),
            _ => None,
        }
    }

    pub fn id(self) -> u16 {
        match self {
            Prf::HmacSha256 => transform::PRF_HMAC_SHA2_256,
            Prf::HmacSha384 => transform::PRF_HMAC_SHA2_384,
            Prf::HmacSha512 => transform::PRF_HMAC_SHA2_512,
        }
    }

    /// Output (and preferred key) length in bytes.
    pub fn output_len(self) -> usize {
        match self {
            Prf::HmacSha256 => 32,
            Prf::HmacSha384 => 48,
            Prf::HmacSha512 => 64,
        }
    }

    fn alg(self) -> hmac::Algorithm {
        match self {
            Prf::HmacSha256 => hmac::HMAC_SHA256,
            Prf::HmacSha384 => hmac::HMAC_SHA384,
            Prf::HmacSha512 => hmac::HMAC_SHA512,
        }
    }

    /// prf(key, data).
    pub fn prf(self, key: &[u8], data: &[&[u8]]) -> Secret {
        let k = hmac::Key::new(self.alg(), key);
        let mut ctx = hmac::Context::with_key(&k);
        for d in data {
            ctx.update(d);
        }
        Zeroizing::new(ctx.sign().as_ref().to_vec())
    }

    /// prf+(key, seed) truncated to `len` bytes (RFC 7296 2.13).
    pub fn prf_plus(self, key: &[u8], seed: &[u8], len: usize) -> Secret {
        let mut out = Zeroizing::new(Vec::with_capacity(len.saturating_add(self.output_len())));
        let mut t: Secret = Zeroizing::new(Vec::new());
        let mut counter: u8 = 1;
        while out.len() < len {
            t = self.prf(key, &[&t, seed, &[counter]]);
            out.extend_from_slice(&t);
            // RFC 7296 caps prf+ at 255 iterations; our lengths stay far below.
            counter = counter.wrapping_add(1);
        }
        out.truncate(len);
        out
    }
}

/// A Diffie-Hellman group we offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DhGroup {
    X25519,
    Ecp256,
    Modp2048,
}

impl DhGroup {
    pub fn from_id(id: u16) -> Option<DhGroup> {
        match id {
            transform::DH_X25519 => Some(DhGroup::X25519),
            transform::DH_ECP256 => Some(DhGroup::Ecp256),
            transform::DH_MODP2048 => Some(DhGroup::Modp2048),
            _ => None,
        }
    }

    pub fn id(self) -> u16 {
        match self {
            DhGroup::X25519 => transform::DH_X25519,
            DhGroup::Ecp256 => transform::DH_ECP256,
            DhGroup::Modp2048 => transform::DH_MODP2048,
        }
    }

    /// Length of the KE payload's key exchange data.
    pub fn public_len(self) -> usize {
        match self {
            DhGroup::X25519 => 32,
            DhGroup::Ecp256 => 64,
            DhGroup::Modp2048 => 256,
        }
    }
}

/// RFC 3526 group 14 prime.
const MODP2048_P: &str = "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3BE39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF";

/// Our half of a Diffie-Hellman exchange.
pub struct DhPrivate {
    group: DhGroup,
    secret: Secret,
    public: Vec<u8>,
}

impl core::fmt::Debug for DhPrivate {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "DhPrivate({:?}, <secret>)", self.group)
    }
}

/// Why a DH computation failed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DhError {
    #[error("the peer's public value is malformed or invalid for the group")]
    BadPublic,
}

impl DhPrivate {
    pub fn generate<R: RngCore + CryptoRng>(group: DhGroup, rng: &mut R) -> DhPrivate {
        match group {
            DhGroup::X25519 => {
                let mut b = Zeroizing::new([0u8; 32]);
                rng.fill_bytes(b.as_mut());
                let s = x25519_dalek::StaticSecret::from(*b);
                let public = x25519_dalek::PublicKey::from(&s).as_bytes().to_vec();
                DhPrivate {
                    group,
                    secret: Zeroizing::new(s.to_bytes().to_vec()),
                    public,
                }
            }
            DhGroup::Ecp256 => {
                let s = p256::SecretKey::random(rng);
                let point = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(
                    &s.public_key(),
                    false,
                );
                // SEC1 uncompressed is 0x04 | x | y; IKE carries x | y (RFC 5903).
                let public = point.as_bytes().get(1..).unwrap_or_default().to_vec();
                DhPrivate {
                    group,
                    secret: Zeroizing::new(s.to_bytes().to_vec()),
                    public,
                }
            }
            DhGroup::Modp2048 => {
                // A 256-bit exponent: twice the group's ~112-bit strength (RFC 3526 sec. 8).
                let mut x = Zeroizing::new(vec![0u8; 32]);
                rng.fill_bytes(&mut x);
                let p = modp_p();
                let y = BigUint::from(2u8).modpow(&BigUint::from_bytes_be(&x), &p);
                DhPrivate {
                    group,
                    secret: x,
                    public: left_pad(&y.to_bytes_be(), 256),
                }
            }
        }
    }

    pub fn group(&self) -> DhGroup {
        self.group
    }

    pub fn public(&self) -> &[u8] {
        &self.public
    }

    /// g^ir from the peer's public value.
    pub fn shared(&self, peer: &[u8]) -> Result<Secret, DhError> {
        if peer.len() != self.group.public_len() {
            return Err(DhError::BadPublic);
        }
        match self.group {
            DhGroup::X25519 => {
                let mut s = [0u8; 32];
                s.copy_from_slice(&self.secret);
                let s = x25519_dalek::StaticSecret::from(s);
                let mut p = [0u8; 32];
                p.copy_from_slice(peer);
                let shared = s.diffie_hellman(&x25519_dalek::PublicKey::from(p));
                // An all-zero result means a low-order point (RFC 7748 6.1).
                if !shared.was_contributory() {
                    return Err(DhError::BadPublic);
                }
                Ok(Zeroizing::new(shared.as_bytes().to_vec()))
            }
            DhGroup::Ecp256 => {
                let mut sec1 = Vec::with_capacity(65);
                sec1.push(4);
                sec1.extend_from_slice(peer);
                let pk = p256::PublicKey::from_sec1_bytes(&sec1).map_err(|_| DhError::BadPublic)?;
                let sk =
                    p256::SecretKey::from_slice(&self.secret).map_err(|_| DhError::BadPublic)?;
                let shared = p256::ecdh::diffie_hellman(sk.to_nonzero_scalar(), pk.as_affine());
                Ok(Zeroizing::new(shared.raw_secret_bytes().to_vec()))
            }
            DhGroup::Modp2048 => {
                let p = modp_p();
                let y = BigUint::from_bytes_be(peer);
                // 1 < y < p - 1 (RFC 7296 / SP 800-56A public key validation).
                let one = BigUint::from(1u8);
                // `p` is the RFC 3526 prime: `p - 1` cannot underflow.
                #[allow(clippy::arithmetic_side_effects)]
                let p_minus_one = &p - &one;
                if y <= one || y >= p_minus_one {
                    return Err(DhError::BadPublic);
                }
                let z = y.modpow(&BigUint::from_bytes_be(&self.secret), &p);
                Ok(Zeroizing::new(left_pad(&z.to_bytes_be(), 256)))
            }
        }
    }
}

fn modp_p() -> BigUint {
    BigUint::parse_bytes(MODP2048_P.as_bytes(), 16).unwrap_or_default()
}

fn left_pad(b: &[u8], len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len.saturating_sub(b.len())];
    v.extend_from_slice(b);
    v
}

/// The keys of an IKE SA (RFC 7296 2.14).
pub struct IkeKeys {
    pub prf: Prf,
    pub sk_d: Secret,
    /// Integrity keys (empty for AES-GCM, which has none).
    pub sk_ai: Secret,
    pub sk_ar: Secret,
    pub sk_ei: Secret,
    pub sk_er: Secret,
    pub sk_pi: Secret,
    pub sk_pr: Secret,
}

impl core::fmt::Debug for IkeKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "IkeKeys({:?}, <secret>)", self.prf)
    }
}

impl IkeKeys {
    /// SKEYSEED = prf(Ni | Nr, g^ir) (or, for an IKE SA rekey, prf(SK_d(old), g^ir | Ni | Nr))
    /// and {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} = prf+(SKEYSEED, Ni | Nr |
    /// SPIi | SPIr). AES-GCM needs no integrity keys; `encr_len` includes the salt.
    #[allow(clippy::too_many_arguments)]
    pub fn derive(
        prf: Prf,
        old_sk_d: Option<(Prf, &[u8])>,
        shared: &[u8],
        ni: &[u8],
        nr: &[u8],
        spi_i: u64,
        spi_r: u64,
        encr_len: usize,
        integ_len: usize,
    ) -> IkeKeys {
        let skeyseed = match old_sk_d {
            None => prf.prf(&[ni, nr].concat(), &[shared]),
            Some((old_prf, sk_d)) => old_prf.prf(sk_d, &[shared, ni, nr]),
        };
        let mut seed = Vec::with_capacity(ni.len().saturating_add(nr.len()).saturating_add(16));
        seed.extend_from_slice(ni);
        seed.extend_from_slice(nr);
        seed.extend_from_slice(&spi_i.to_be_bytes());
        seed.extend_from_slice(&spi_r.to_be_bytes());
        let p = prf.output_len();
        let (e, a) = (encr_len, integ_len);
        let total = [p, a, a, e, e, p, p]
            .iter()
            .fold(0usize, |t, n| t.saturating_add(*n));
        let km = prf.prf_plus(&skeyseed, &seed, total);
        // The keys in RFC 7296 2.14 order, each following the last.
        let mut at = 0usize;
        let mut take = |n: usize| {
            let end = at.saturating_add(n);
            let k = Zeroizing::new(km.get(at..end).unwrap_or_default().to_vec());
            at = end;
            k
        };
        IkeKeys {
            prf,
            sk_d: take(p),
            sk_ai: take(a),
            sk_ar: take(a),
            sk_ei: take(e),
            sk_er: take(e),
            sk_pi: take(p),
            sk_pr: take(p),
        }
    }
}

/// KEYMAT for a CHILD_SA: prf+(SK_d, [g^ir (new)] | Ni | Nr) (RFC 7296 2.17); the first half
/// is for the initiator-to-responder SA, the second for the other direction.
pub fn child_keymat(
    prf: Prf,
    sk_d: &[u8],
    shared: Option<&[u8]>,
    ni: &[u8],
    nr: &[u8],
    len_each: usize,
) -> (Secret, Secret) {
    let mut seed = Vec::new();
    if let Some(s) = shared {
        seed.extend_from_slice(s);
    }
    seed.extend_from_slice(ni);
    seed.extend_from_slice(nr);
    let km = prf.prf_plus(sk_d, &seed, len_each.saturating_mul(2));
    seed.zeroize();
    let i2r = Zeroizing::new(km.get(..len_each).unwrap_or_default().to_vec());
    let r2i = Zeroizing::new(km.get(len_each..).unwrap_or_default().to_vec());
    (i2r, r2i)
}

/// The PSK AUTH value: prf(prf(Secret, "Key Pad for IKEv2"), <SignedOctets>), where the
/// signed octets are the message | peer's nonce | prf(SK_px, ID body).
pub fn psk_auth(
    prf: Prf,
    psk: &[u8],
    message: &[u8],
    peer_nonce: &[u8],
    sk_p: &[u8],
    id_body: &[u8],
) -> Secret {
    let maced_id = prf.prf(sk_p, &[id_body]);
    let pad = prf.prf(psk, &[b"Key Pad for IKEv2"]);
    prf.prf(&pad, &[message, peer_nonce, &maced_id])
}

/// The NAT detection hash: SHA-1(SPIi | SPIr | IP | port) (RFC 7296 2.23).
pub fn nat_hash(spi_i: u64, spi_r: u64, addr: core::net::IpAddr, port: u16) -> Vec<u8> {
    let mut d = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    d.update(&spi_i.to_be_bytes());
    d.update(&spi_r.to_be_bytes());
    match addr {
        core::net::IpAddr::V4(a) => d.update(&a.octets()),
        core::net::IpAddr::V6(a) => d.update(&a.octets()),
    }
    d.update(&port.to_be_bytes());
    d.finish().as_ref().to_vec()
}

/// The encrypted payload's cipher for one direction: AES-GCM-16 (RFC 5282: 8-byte explicit IV,
/// 16-byte ICV) or AES-CBC with HMAC-SHA2-256-128 (RFC 7296 3.14, RFC 4868). IVs never repeat:
/// GCM's is a counter; CBC's is the counter encrypted under the key (unpredictable to anyone
/// without it, NIST SP 800-38A appendix C).
///
/// The counter runs inside a window `[next_iv, iv_end)`: a new cipher gets the first epoch
/// `[1, 2^48)`; an IKE SA adopted from a record gets a later epoch of its own (see
/// `record`), so that it never meets a counter value the exporter may have used. A cipher
/// whose window is used up seals nothing rather than repeat a counter.
pub struct SkCipher {
    kind: SkKind,
    next_iv: u64,
    iv_end: u64,
}

/// The counter bits of an IV below its epoch (the IV is `epoch << 48 | counter`).
pub const SK_IV_EPOCH_SHIFT: u32 = 48;

enum SkKind {
    Gcm {
        key: Box<aead::LessSafeKey>,
        salt: [u8; 4],
    },
    Cbc {
        aes: Box<Aes>,
        integ: hmac::Key,
    },
}

enum Aes {
    A128(Box<aes::Aes128>),
    A256(Box<aes::Aes256>),
}

impl Aes {
    fn new(k: &[u8]) -> Option<Aes> {
        use aes::cipher::KeyInit;
        match k.len() {
            16 => aes::Aes128::new_from_slice(k)
                .ok()
                .map(|c| Aes::A128(Box::new(c))),
            32 => aes::Aes256::new_from_slice(k)
                .ok()
                .map(|c| Aes::A256(Box::new(c))),
            _ => None,
        }
    }
    fn encrypt(&self, b: &mut [u8; 16]) {
        use aes::cipher::BlockEncrypt;
        let mut blk = aes::Block::from(*b);
        match self {
            Aes::A128(c) => c.encrypt_block(&mut blk),
            Aes::A256(c) => c.encrypt_block(&mut blk),
        }
        b.copy_from_slice(&blk);
    }
    fn decrypt(&self, b: &mut [u8; 16]) {
        use aes::cipher::BlockDecrypt;
        let mut blk = aes::Block::from(*b);
        match self {
            Aes::A128(c) => c.decrypt_block(&mut blk),
            Aes::A256(c) => c.decrypt_block(&mut blk),
        }
        b.copy_from_slice(&blk);
    }
}

impl core::fmt::Debug for SkCipher {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "SkCipher(<secret>)")
    }
}

pub const SK_IV_LEN: usize = 8;
pub const SK_ICV_LEN: usize = 16;
const CBC_BLOCK: usize = 16;
/// HMAC-SHA2-256-128: a 32-byte key, the MAC truncated to 16 bytes.
pub const INTEG_SHA256_KEY_LEN: usize = 32;

/// Why an encrypted payload did not open.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SkError {
    #[error("encrypted payload too short")]
    Short,
    #[error("integrity check failed")]
    Integrity,
    #[error("bad padding")]
    Padding,
}

impl SkCipher {
    /// AES-GCM from key material: the AES key followed by the 4-byte salt.
    pub fn new(keymat: &[u8]) -> Option<SkCipher> {
        let (k, salt) = keymat.split_at_checked(keymat.len().checked_sub(4)?)?;
        let alg = match k.len() {
            16 => &aead::AES_128_GCM,
            32 => &aead::AES_256_GCM,
            _ => return None,
        };
        let key = aead::LessSafeKey::new(aead::UnboundKey::new(alg, k).ok()?);
        let mut s = [0u8; 4];
        s.copy_from_slice(salt);
        Some(SkCipher {
            kind: SkKind::Gcm {
                key: Box::new(key),
                salt: s,
            },
            next_iv: 1,
            iv_end: 1 << SK_IV_EPOCH_SHIFT,
        })
    }

    /// AES-CBC with HMAC-SHA2-256-128.
    pub fn new_cbc(encr_key: &[u8], integ_key: &[u8]) -> Option<SkCipher> {
        Some(SkCipher {
            kind: SkKind::Cbc {
                aes: Box::new(Aes::new(encr_key)?),
                integ: hmac::Key::new(hmac::HMAC_SHA256, integ_key),
            },
            next_iv: 1,
            iv_end: 1 << SK_IV_EPOCH_SHIFT,
        })
    }

    /// Bytes of the SK payload body (IV, ciphertext with padding, ICV) for `inner` bytes.
    pub fn sealed_len(&self, inner: usize) -> usize {
        match self.kind {
            SkKind::Gcm { .. } => SK_IV_LEN
                .saturating_add(inner)
                .saturating_add(1)
                .saturating_add(SK_ICV_LEN),
            SkKind::Cbc { .. } => CBC_BLOCK
                .saturating_add(
                    inner
                        .saturating_add(1)
                        .div_ceil(CBC_BLOCK)
                        .saturating_mul(CBC_BLOCK),
                )
                .saturating_add(SK_ICV_LEN),
        }
    }

    /// IV | ciphertext | ICV of `inner` (the inner payload chain); `aad` is the message up to
    /// the SK payload's body (IKE header and SK generic header), whose length fields already
    /// count [`sealed_len`](Self::sealed_len).
    /// Empty when the IV window is used up (no counter is ever used twice).
    pub fn seal(&mut self, aad: &[u8], inner: &[u8]) -> Vec<u8> {
        let ctr = self.next_iv;
        if ctr >= self.iv_end {
            return Vec::new();
        }
        self.next_iv = ctr.saturating_add(1);
        match &self.kind {
            SkKind::Gcm { key, salt } => {
                let iv = ctr.to_be_bytes();
                let mut buf = Vec::with_capacity(self.sealed_len(inner.len()));
                buf.extend_from_slice(&iv);
                let mut pt = inner.to_vec();
                pt.push(0); // pad length: GCM needs no padding
                let tag = key
                    .seal_in_place_separate_tag(gcm_nonce(salt, &iv), aead::Aad::from(aad), &mut pt)
                    .ok();
                buf.extend_from_slice(&pt);
                pt.zeroize();
                match tag {
                    Some(t) => buf.extend_from_slice(t.as_ref()),
                    None => buf.extend_from_slice(&[0u8; SK_ICV_LEN]),
                }
                buf
            }
            SkKind::Cbc { aes, integ } => {
                let mut iv = [0u8; CBC_BLOCK];
                iv[8..].copy_from_slice(&ctr.to_be_bytes());
                aes.encrypt(&mut iv);
                let mut pt = Zeroizing::new(inner.to_vec());
                // Pad to whole blocks: `pad` zeros, then the pad length (below 16).
                let used = inner.len().saturating_add(1) % CBC_BLOCK;
                let pad = CBC_BLOCK.saturating_sub(used) % CBC_BLOCK;
                pt.extend(core::iter::repeat_n(0u8, pad));
                pt.push(u8::try_from(pad).unwrap_or(0));
                let mut out = Vec::with_capacity(self.sealed_len(inner.len()));
                out.extend_from_slice(&iv);
                let mut prev = iv;
                for chunk in pt.chunks(CBC_BLOCK) {
                    let mut b = [0u8; CBC_BLOCK];
                    for ((x, c), p) in b
                        .iter_mut()
                        .zip(chunk.iter().chain(core::iter::repeat(&0)))
                        .zip(prev)
                    {
                        *x = c ^ p;
                    }
                    aes.encrypt(&mut b);
                    out.extend_from_slice(&b);
                    prev = b;
                }
                let mut ctx = hmac::Context::with_key(integ);
                ctx.update(aad);
                ctx.update(&out);
                out.extend_from_slice(ctx.sign().as_ref().get(..SK_ICV_LEN).unwrap_or_default());
                out
            }
        }
    }

    /// The inner payload chain of IV | ciphertext | ICV.
    pub fn open(&self, aad: &[u8], body: &[u8]) -> Result<Secret, SkError> {
        match &self.kind {
            SkKind::Gcm { key, salt } => {
                if body.len() < SK_IV_LEN + 1 + SK_ICV_LEN {
                    return Err(SkError::Short);
                }
                let (iv, rest) = body.split_at(SK_IV_LEN);
                let mut ivb = [0u8; 8];
                ivb.copy_from_slice(iv);
                let mut ct = Zeroizing::new(rest.to_vec());
                let pt = key
                    .open_in_place(gcm_nonce(salt, &ivb), aead::Aad::from(aad), &mut ct)
                    .map_err(|_| SkError::Integrity)?;
                strip_padding(pt)
            }
            SkKind::Cbc { aes, integ } => {
                // IV, at least one block, ICV; the IV and ciphertext in whole blocks.
                let signed_len = body.len().checked_sub(SK_ICV_LEN).ok_or(SkError::Short)?;
                if signed_len < 2 * CBC_BLOCK || signed_len % CBC_BLOCK != 0 {
                    return Err(SkError::Short);
                }
                let (signed, icv) = body.split_at(signed_len);
                let mut ctx = hmac::Context::with_key(integ);
                ctx.update(aad);
                ctx.update(signed);
                let mac = ctx.sign();
                let want = mac.as_ref().get(..SK_ICV_LEN).unwrap_or_default();
                // Constant time: the MAC is checked before anything is decrypted.
                if want.len() != icv.len()
                    || want.iter().zip(icv).fold(0u8, |a, (x, y)| a | (x ^ y)) != 0
                {
                    return Err(SkError::Integrity);
                }
                let (iv, ct) = signed.split_at(CBC_BLOCK);
                let mut prev = [0u8; CBC_BLOCK];
                prev.copy_from_slice(iv);
                let mut pt = Zeroizing::new(Vec::with_capacity(ct.len()));
                for chunk in ct.chunks(CBC_BLOCK) {
                    let mut b = [0u8; CBC_BLOCK];
                    b.copy_from_slice(chunk);
                    let c = b;
                    aes.decrypt(&mut b);
                    for (x, p) in b.iter_mut().zip(prev) {
                        *x ^= p;
                    }
                    pt.extend_from_slice(&b);
                    prev = c;
                }
                strip_padding(&pt)
            }
        }
    }

    /// The IV counter the next [`seal`](Self::seal) uses and the end (exclusive) of its window.
    pub fn iv_window(&self) -> (u64, u64) {
        (self.next_iv, self.iv_end)
    }

    /// Continues sealing with counters in `[next, end)` (an adopted IKE SA's epoch).
    pub fn set_iv_window(&mut self, next: u64, end: u64) {
        self.next_iv = next;
        self.iv_end = end;
    }

    /// Encryption key material length for AES-GCM with `key_bits` (salt included).
    pub fn keymat_len(key_bits: u16) -> usize {
        usize::from(key_bits / 8) + 4
    }
}

fn gcm_nonce(salt: &[u8; 4], iv: &[u8; 8]) -> aead::Nonce {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(salt);
    n[4..].copy_from_slice(iv);
    aead::Nonce::assume_unique_for_key(n)
}

fn strip_padding(pt: &[u8]) -> Result<Secret, SkError> {
    let pad = usize::from(*pt.last().ok_or(SkError::Padding)?);
    let inner_len = pt.len().checked_sub(1 + pad).ok_or(SkError::Padding)?;
    Ok(Zeroizing::new(
        pt.get(..inner_len).unwrap_or_default().to_vec(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn hmac_sha256_rfc4231_case_2() {
        let out = Prf::HmacSha256.prf(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            out.as_slice(),
            hex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        );
    }

    #[test]
    fn prf_plus_is_the_chained_prf() {
        let p = Prf::HmacSha256;
        let out = p.prf_plus(b"key", b"seed", 80);
        let t1 = p.prf(b"key", &[b"seed", &[1]]);
        let t2 = p.prf(b"key", &[&t1, b"seed", &[2]]);
        let t3 = p.prf(b"key", &[&t2, b"seed", &[3]]);
        assert_eq!(&out[..32], &t1[..]);
        assert_eq!(&out[32..64], &t2[..]);
        assert_eq!(&out[64..], &t3[..16]);
    }

    #[test]
    fn x25519_rfc7748_vector() {
        // RFC 7748 6.1: Alice's private key and Bob's public key give the shared secret.
        let a = hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        let b_pub = hex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f");
        let priv_a = DhPrivate {
            group: DhGroup::X25519,
            secret: Zeroizing::new(a),
            public: vec![],
        };
        assert_eq!(
            priv_a.shared(&b_pub).unwrap().as_slice(),
            hex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
        );
        assert_eq!(priv_a.shared(&[0u8; 32]), Err(DhError::BadPublic));
    }

    #[test]
    fn every_group_agrees_and_rejects_junk() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        for g in [DhGroup::X25519, DhGroup::Ecp256, DhGroup::Modp2048] {
            let a = DhPrivate::generate(g, &mut rng);
            let b = DhPrivate::generate(g, &mut rng);
            assert_eq!(a.public().len(), g.public_len());
            assert_eq!(
                a.shared(b.public()).unwrap(),
                b.shared(a.public()).unwrap(),
                "{g:?}"
            );
            assert!(a.shared(&b.public()[1..]).is_err(), "{g:?}: short value");
        }
        let m = DhPrivate::generate(DhGroup::Modp2048, &mut rng);
        let mut one = vec![0u8; 256];
        one[255] = 1;
        assert_eq!(m.shared(&one), Err(DhError::BadPublic));
        let e = DhPrivate::generate(DhGroup::Ecp256, &mut rng);
        assert_eq!(
            e.shared(&[7u8; 64]),
            Err(DhError::BadPublic),
            "not on the curve"
        );
    }

    #[test]
    fn sk_payload_round_trip_and_tamper() {
        let km: Vec<u8> = (0..20u8).collect();
        let mut s = SkCipher::new(&km).unwrap();
        let o = SkCipher::new(&km).unwrap();
        let aad = b"header and sk header";
        let c1 = s.seal(aad, b"inner payloads");
        let c2 = s.seal(aad, b"inner payloads");
        assert_ne!(c1[..8], c2[..8], "IVs never repeat");
        assert_eq!(o.open(aad, &c1).unwrap().as_slice(), b"inner payloads");
        let mut bad = c1.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(o.open(aad, &bad), Err(SkError::Integrity));
        assert_eq!(o.open(b"other aad", &c1), Err(SkError::Integrity));
        assert_eq!(o.open(aad, &c1[..20]), Err(SkError::Short));
    }

    #[test]
    fn a_used_up_iv_window_seals_nothing() {
        let km: Vec<u8> = (0..20u8).collect();
        let mut s = SkCipher::new(&km).unwrap();
        assert_eq!(s.iv_window(), (1, 1 << SK_IV_EPOCH_SHIFT));
        s.set_iv_window(7, 9);
        let a = s.seal(b"aad", b"x");
        let b = s.seal(b"aad", b"x");
        assert_eq!(a[..8], 7u64.to_be_bytes());
        assert_eq!(b[..8], 8u64.to_be_bytes());
        assert!(
            s.seal(b"aad", b"x").is_empty(),
            "counter 9 is outside the window"
        );
        assert_eq!(s.iv_window(), (9, 9));
        let mut c = SkCipher::new_cbc(&[3u8; 16], &[9u8; 32]).unwrap();
        c.set_iv_window(u64::MAX, u64::MAX);
        assert!(c.seal(b"aad", b"x").is_empty());
    }

    #[test]
    fn key_derivation_splits_prf_plus_in_rfc_order() {
        let k = IkeKeys::derive(
            Prf::HmacSha256,
            None,
            b"shared",
            &[1; 32],
            &[2; 32],
            1,
            2,
            20,
            0,
        );
        let skeyseed = Prf::HmacSha256.prf(&[[1u8; 32], [2u8; 32]].concat(), &[b"shared"]);
        let mut seed = [[1u8; 32], [2u8; 32]].concat();
        seed.extend_from_slice(&1u64.to_be_bytes());
        seed.extend_from_slice(&2u64.to_be_bytes());
        let km = Prf::HmacSha256.prf_plus(&skeyseed, &seed, 32 * 3 + 40);
        assert_eq!(&k.sk_d[..], &km[..32]);
        assert_eq!(&k.sk_ei[..], &km[32..52]);
        assert_eq!(&k.sk_er[..], &km[52..72]);
        assert_eq!(&k.sk_pi[..], &km[72..104]);
        assert_eq!(&k.sk_pr[..], &km[104..136]);
    }
}

#[cfg(test)]
mod cbc_tests {
    use super::*;

    #[test]
    fn cbc_hmac_round_trip_padding_and_tamper() {
        for klen in [16usize, 32] {
            let mut s = SkCipher::new_cbc(&vec![3u8; klen], &[9u8; 32]).unwrap();
            let o = SkCipher::new_cbc(&vec![3u8; klen], &[9u8; 32]).unwrap();
            for n in [0usize, 1, 15, 16, 17, 100] {
                let inner = vec![0x5au8; n];
                let c = s.seal(b"aad", &inner);
                assert_eq!(c.len(), s.sealed_len(n));
                assert_eq!(o.open(b"aad", &c).unwrap().as_slice(), inner.as_slice());
                let mut bad = c.clone();
                bad[20] ^= 1;
                assert_eq!(o.open(b"aad", &bad), Err(SkError::Integrity));
                assert_eq!(o.open(b"AAD", &c), Err(SkError::Integrity));
            }
            let a = s.seal(b"x", b"same");
            let b = s.seal(b"x", b"same");
            assert_ne!(a[..16], b[..16], "IVs differ");
        }
    }
}
