//! Values are encrypted and authenticated with the cluster key before they reach the store.
//!
//! # Format
//!
//! `version u8 (= 1) | salt [16] | nonce [12] | AES-256-GCM ciphertext | tag [16]`, with the
//! record's full key path (`/roamgate/<cluster>/...`) as associated data: a value copied to
//! another key (another SA, another cluster) does not open there.
//!
//! # Why no (key, nonce) pair repeats
//!
//! Each value is sealed under its own key, `HKDF-SHA256(ikm = cluster key, salt = 16 random
//! bytes, info = "roamgate cluster-store v1")`, with a 96-bit random nonce, both drawn from
//! the system's CSPRNG (`ring::rand::SystemRandom`) for every write. A (key, nonce) pair can
//! only repeat if both 128-bit salts and 96-bit nonces collide: about `n^2 / 2^225` for `n`
//! writes, nothing at any rate a store can take. The two obvious alternatives are worse here:
//! a plain random 96-bit nonce under the one cluster key is limited to 2^32 writes per key
//! (NIST SP 800-38D), which 10,000 installs/s (40,000 values/s) reaches in about 30 hours;
//! a counter with the node id needs a counter that survives restarts and crashes on every
//! node (a reset counter repeats nonces), i.e. durable state per node that a crypto node that
//! restarts from the store would have to get right. Random salts need no state at all.
//!
//! # Key handling
//!
//! The cluster key is read from a file named in the configuration (32 raw bytes, or 64 hex
//! digits and an optional newline), kept in a zeroizing buffer, and never logged (`Debug`
//! shows nothing of it). The per-value HKDF output is filled into a zeroizing buffer; ring
//! holds the expanded AES key schedule only for the one call and does not zeroize it (a
//! limitation of ring that the data plane shares).
//!
//! A value that does not open (wrong key, moved, altered, truncated) is refused: never
//! returned, counted in [`SealStats::refused`] and reported by the caller with its key.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

/// The format version byte.
pub const SEAL_VERSION: u8 = 1;
const SALT: usize = 16;
const NONCE: usize = 12;
const TAG: usize = 16;
/// Bytes a sealed value adds to the record.
pub const OVERHEAD: usize = 1 + SALT + NONCE + TAG;
const INFO: &[u8] = b"roamgate cluster-store v1";

/// Counters of the sealer (shared by everything that uses it).
#[derive(Debug, Default)]
pub struct SealStats {
    pub sealed: AtomicU64,
    pub opened: AtomicU64,
    /// Values that did not open: tampered, moved to another key, another cluster key, cut.
    pub refused: AtomicU64,
}

/// Why a value was refused (no detail on purpose: all look alike to an attacker).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error(
        "the value does not open with the cluster key at this key (tampered, moved or another key)"
    )]
    Refused,
    #[error("the system random generator failed")]
    Random,
}

/// Why the cluster key file was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cluster key file {path}: {err}")]
    Read { path: String, err: std::io::Error },
    #[error("cluster key file {path}: {what} (it must hold 32 bytes, raw or as 64 hex digits)")]
    Format { path: String, what: String },
}

/// Seals and opens values with the cluster key.
pub struct Sealer {
    key: Zeroizing<[u8; 32]>,
    rng: SystemRandom,
    pub stats: SealStats,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(cluster key hidden)")
    }
}

impl Sealer {
    pub fn new(key: Zeroizing<[u8; 32]>) -> Sealer {
        Sealer {
            key,
            rng: SystemRandom::new(),
            stats: SealStats::default(),
        }
    }

    /// Reads the cluster key from `path` (32 raw bytes, or 64 hex digits and optional
    /// whitespace at the end).
    pub fn from_file(path: &Path) -> Result<Sealer, KeyFileError> {
        let name = path.display().to_string();
        let raw = Zeroizing::new(std::fs::read(path).map_err(|err| KeyFileError::Read {
            path: name.clone(),
            err,
        })?);
        let mut key = Zeroizing::new([0u8; 32]);
        if raw.len() == 32 {
            key.copy_from_slice(&raw);
        } else {
            let text = std::str::from_utf8(&raw).map_err(|_| KeyFileError::Format {
                path: name.clone(),
                what: format!("{} bytes that are not 32 raw bytes nor hex", raw.len()),
            })?;
            let hex = text.trim_end();
            if hex.len() != 64 {
                return Err(KeyFileError::Format {
                    path: name,
                    what: format!("{} characters of text, expected 64 hex digits", hex.len()),
                });
            }
            for (i, out) in key.iter_mut().enumerate() {
                let pair = hex.get(i * 2..i * 2 + 2).unwrap_or("");
                *out = u8::from_str_radix(pair, 16).map_err(|_| KeyFileError::Format {
                    path: name.clone(),
                    what: "a character that is not a hex digit".into(),
                })?;
            }
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path) {
                if meta.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(target: "control", file = %name,
                        "the cluster key file can be read by group or others (chmod 600)");
                }
            }
        }
        Ok(Sealer::new(key))
    }

    fn value_key(&self, salt: &[u8]) -> Result<LessSafeKey, SealError> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(&self.key[..]);
        let okm = prk
            .expand(&[INFO], hkdf::HKDF_SHA256)
            .map_err(|_| SealError::Refused)?;
        let mut bytes = Zeroizing::new([0u8; 32]);
        okm.fill(&mut bytes[..]).map_err(|_| SealError::Refused)?;
        let unbound = UnboundKey::new(&AES_256_GCM, &bytes[..]).map_err(|_| SealError::Refused)?;
        Ok(LessSafeKey::new(unbound))
    }

    /// Derives key material for another use of the cluster key:
    /// `HKDF-SHA256(ikm = cluster key, salt = salt, info = info parts)` filled into `out`
    /// (at most 255 * 32 bytes). Callers use an `info` that starts with their own label, never
    /// the sealing's ("roamgate cluster-store v1"), so the outputs are independent of every
    /// value key.
    pub fn derive(&self, salt: &[u8], info: &[&[u8]], out: &mut [u8]) -> Result<(), SealError> {
        struct Len(usize);
        impl hkdf::KeyType for Len {
            fn len(&self) -> usize {
                self.0
            }
        }
        if info.first().is_some_and(|l| *l == INFO) {
            return Err(SealError::Refused);
        }
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(&self.key[..]);
        let okm = prk
            .expand(info, Len(out.len()))
            .map_err(|_| SealError::Refused)?;
        okm.fill(out).map_err(|_| SealError::Refused)
    }

    /// Seals `plain` for the key path `path`.
    pub fn seal(&self, path: &[u8], plain: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut salt = [0u8; SALT];
        let mut nonce = [0u8; NONCE];
        self.rng.fill(&mut salt).map_err(|_| SealError::Random)?;
        self.rng.fill(&mut nonce).map_err(|_| SealError::Random)?;
        let key = self.value_key(&salt)?;
        let mut body = Zeroizing::new(plain.to_vec());
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(path),
                &mut body[..],
            )
            .map_err(|_| SealError::Refused)?;
        let mut out = Vec::with_capacity(plain.len().saturating_add(OVERHEAD));
        out.push(SEAL_VERSION);
        out.extend_from_slice(&salt);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        out.extend_from_slice(tag.as_ref());
        self.stats.sealed.fetch_add(1, Ordering::Relaxed);
        Ok(out)
    }

    /// Opens a value read at `path`; anything that does not authenticate is refused and
    /// counted.
    pub fn open(&self, path: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let r = self.open_inner(path, sealed);
        match r {
            Ok(_) => self.stats.opened.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.stats.refused.fetch_add(1, Ordering::Relaxed),
        };
        r
    }

    fn open_inner(&self, path: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        if sealed.len() < OVERHEAD || sealed.first() != Some(&SEAL_VERSION) {
            return Err(SealError::Refused);
        }
        let (head, body) = sealed.split_at(1 + SALT + NONCE);
        let (salt, nonce) = head.get(1..).unwrap_or(&[]).split_at(SALT);
        let key = self.value_key(salt)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Refused)?;
        let mut buf = Zeroizing::new(body.to_vec());
        let plain_len = key
            .open_in_place(nonce, Aad::from(path), &mut buf[..])
            .map_err(|_| SealError::Refused)?
            .len();
        buf.truncate(plain_len);
        Ok(buf)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn sealer(b: u8) -> Sealer {
        Sealer::new(Zeroizing::new([b; 32]))
    }

    #[test]
    fn seal_open_round_trip_with_fresh_salt_and_nonce_each_time() {
        let s = sealer(7);
        let a = s.seal(b"/roamgate/c/ike/01", b"secret record").unwrap();
        let b = s.seal(b"/roamgate/c/ike/01", b"secret record").unwrap();
        assert_eq!(a.len(), 13 + OVERHEAD);
        assert_ne!(a, b, "salt and nonce are fresh per value");
        assert_ne!(a[1..29], b[1..29]);
        assert!(!a.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            &*s.open(b"/roamgate/c/ike/01", &a).unwrap(),
            b"secret record"
        );
        assert_eq!(s.stats.sealed.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn tampered_moved_cut_or_foreign_values_are_refused_and_counted() {
        let s = sealer(7);
        let path = b"/roamgate/c/child/00000007/out";
        let v = s.seal(path, b"params").unwrap();
        for i in 0..v.len() {
            let mut t = v.clone();
            t[i] ^= 0x01;
            assert_eq!(
                s.open(path, &t),
                Err(SealError::Refused),
                "bit flipped at {i}"
            );
        }
        assert_eq!(
            s.open(b"/roamgate/c/child/00000008/out", &v),
            Err(SealError::Refused),
            "moved to another key"
        );
        assert_eq!(s.open(path, &v[..v.len() - 1]), Err(SealError::Refused));
        assert_eq!(s.open(path, &[]), Err(SealError::Refused));
        assert_eq!(
            sealer(8).open(path, &v),
            Err(SealError::Refused),
            "another cluster key"
        );
        let refused = s.stats.refused.load(Ordering::Relaxed);
        assert_eq!(refused, v.len() as u64 + 3);
        assert!(s.open(path, &v).is_ok());
    }

    #[test]
    fn the_key_file_is_raw_or_hex_and_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("rg-seal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let raw = dir.join("raw.key");
        std::fs::write(&raw, [9u8; 32]).unwrap();
        let hex = dir.join("hex.key");
        std::fs::write(&hex, format!("{}\n", "09".repeat(32))).unwrap();
        let a = Sealer::from_file(&raw).unwrap();
        let b = Sealer::from_file(&hex).unwrap();
        let v = a.seal(b"/k", b"x").unwrap();
        assert!(b.open(b"/k", &v).is_ok());
        let bad = dir.join("bad.key");
        std::fs::write(&bad, "0909").unwrap();
        let e = Sealer::from_file(&bad).unwrap_err().to_string();
        assert!(e.contains("bad.key") && e.contains("64 hex"), "{e}");
        let e = Sealer::from_file(&dir.join("missing.key"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.key"), "{e}");
        assert_eq!(format!("{a:?}"), "Sealer(cluster key hidden)");
        std::fs::remove_dir_all(&dir).ok();
    }
}
