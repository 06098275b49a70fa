//! Group keys: key-encryption keys (KEKs) and the RFC 5649 key wrap (transform KW_5649_256,
//! RFC 9838 section 8) that carries SA keys inside KD payloads; the Data-Security SA key
//! material (AES-GCM-16 with an explicit IV only: the AES key then the 4-octet salt, RFC 4106
//! section 8.1).
//!
//! The wrap is the `aes-kw` crate's (RustCrypto), never ours. Keys live in zeroizing buffers
//! and never reach `Debug`.

use zeroize::Zeroizing;

use crate::crypto::Secret;
use crate::group::wire::WrappedKey;

/// KEKs are 256-bit AES keys (KW_5649_256).
pub const KEK_LEN: usize = 32;

/// A key-encryption key and the id members know it by. Id 0 is the default KEK of the IKE SA
/// a registration travels in ([`Kek::from_ike_sa`]); the GCKS gives each member a KEK of its
/// own (a WRAP_KEY in its Member Key Bag) with a non-zero id.
pub struct Kek {
    pub id: u32,
    key: Zeroizing<[u8; KEK_LEN]>,
}

impl core::fmt::Debug for Kek {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Kek({}, <secret>)", self.id)
    }
}

/// Why a key did not unwrap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("wrapped under KEK {got}, expected {want}")]
    WrongKek { got: u32, want: u32 },
    #[error("key wrap integrity check failed")]
    Integrity,
    #[error("key of the wrong length")]
    Length,
}

/// The label of the default KWK of a unicast IKE SA (RFC 9838 section 3.1.1:
/// GSK_w = prf+(SK_d, "Key Wrap for G-IKEv2"), 20 ASCII characters, no terminating null).
const DEFAULT_KEK_LABEL: &[u8] = b"Key Wrap for G-IKEv2";

impl Kek {
    pub fn new(id: u32, key: &[u8]) -> Option<Kek> {
        let mut k = Zeroizing::new([0u8; KEK_LEN]);
        if key.len() != KEK_LEN {
            return None;
        }
        k.copy_from_slice(key);
        Some(Kek { id, key: k })
    }

    pub(crate) fn key_bytes(&self) -> &[u8] {
        self.key.as_ref()
    }

    /// The default KEK (id 0) of an IKE SA: prf+(SK_d, label), both ends derive the same.
    pub fn from_ike_sa(prf: crate::crypto::Prf, sk_d: &[u8]) -> Kek {
        let km = prf.prf_plus(sk_d, DEFAULT_KEK_LABEL, KEK_LEN);
        let mut k = Zeroizing::new([0u8; KEK_LEN]);
        for (d, s) in k.iter_mut().zip(km.iter()) {
            *d = *s;
        }
        Kek { id: 0, key: k }
    }

    /// SA key material wrapped under this KEK (Key ID 0; RFC 5649: any length, padded to
    /// 64-bit blocks).
    pub fn wrap(&self, key: &[u8]) -> WrappedKey {
        self.wrap_key(0, key)
    }

    /// The intermediate key `key_id` (a KWK, never 0) or SA key material (0) wrapped under this
    /// KEK.
    pub fn wrap_key(&self, key_id: u32, key: &[u8]) -> WrappedKey {
        let kek = aes_kw::KekAes256::new(self.key.as_ref().into());
        let n = key.len().div_ceil(8).saturating_mul(8).saturating_add(8);
        let mut out = vec![0u8; n];
        if kek.wrap_with_padding(key, &mut out).is_err() {
            out.clear();
        }
        WrappedKey {
            key_id,
            kwk_id: self.id,
            wrapped: out,
        }
    }

    /// The key inside `w`, which must name this KEK and pass the wrap's integrity check.
    pub fn unwrap(&self, w: &WrappedKey) -> Result<Secret, KeyError> {
        if w.kwk_id != self.id {
            return Err(KeyError::WrongKek {
                got: w.kwk_id,
                want: self.id,
            });
        }
        let kek = aes_kw::KekAes256::new(self.key.as_ref().into());
        let mut out = Zeroizing::new(vec![0u8; w.wrapped.len().saturating_sub(8)]);
        let n = kek
            .unwrap_with_padding(&w.wrapped, &mut out)
            .map_err(|_| KeyError::Integrity)?
            .len();
        out.truncate(n);
        Ok(out)
    }
}

/// Key material length of a Data-Security SA with AES-GCM-16 of `key_bits` (salt included).
pub fn gcm_keymat_len(key_bits: u16) -> usize {
    usize::from(key_bits / 8).saturating_add(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_round_trip_and_tamper() {
        let kek = Kek::new(7, &[3u8; 32]).unwrap();
        for len in [16usize, 20, 32, 36] {
            let k: Vec<u8> = (0..len as u8).collect();
            let w = kek.wrap(&k);
            assert_eq!((w.key_id, w.kwk_id), (0, 7));
            assert_eq!(w.wrapped.len() % 8, 0);
            assert_eq!(kek.unwrap(&w).unwrap().as_slice(), k.as_slice());
            let mut bad = w.clone();
            bad.wrapped[5] ^= 1;
            assert_eq!(kek.unwrap(&bad).unwrap_err(), KeyError::Integrity);
            let other = Kek::new(7, &[4u8; 32]).unwrap();
            assert_eq!(other.unwrap(&w).unwrap_err(), KeyError::Integrity);
            let wrong_id = Kek::new(8, &[3u8; 32]).unwrap();
            assert!(matches!(
                wrong_id.unwrap(&w),
                Err(KeyError::WrongKek { got: 7, want: 8 })
            ));
        }
    }

    /// RFC 5649 section 6, first test vector: a 20-octet key under a 192-bit KEK. Checks the
    /// crate does the RFC's algorithm (our KEKs are 256-bit; same code path).
    #[test]
    fn rfc5649_vector() {
        let kek = hex("5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8");
        let key = hex("c37b7e6492584340bed12207808941155068f738");
        let want = hex("138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a");
        let kek: [u8; 24] = kek.try_into().unwrap();
        let k = aes_kw::KekAes192::from(kek);
        let mut out = vec![0u8; want.len()];
        k.wrap_with_padding(&key, &mut out).unwrap();
        assert_eq!(out, want);
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
}
