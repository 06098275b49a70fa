//! An SA as data: the parameters one direction of a tunnel-mode ESP SA is built from.
//!
//! This module owns [`SaParams`] and its parts: the ESP transform ([`EspAlg`]: an AEAD, or
//! AES-CBC with an HMAC), the key material
//! ([`SaKeys`]: zeroized on drop, never in `Debug`), the UDP encapsulation ports, the byte
//! and packet [`Lifetime`]s, and the state that moves with an SA between workers, processes
//! or nodes ([`Resume`], [`ReplayState`], [`SaState`]) with the [`Checkpoint`]s that report
//! it. It never expands a key or builds a runtime record (the data plane's agent does, off
//! the fast path).
//!
//! # Sequence numbers that move
//!
//! An outbound SA's sequence number is its GCM nonce: under one key, no number may be sent
//! twice, by any worker, process or node, across any restart. An SA is therefore installed
//! with the last number already used ([`Resume::seq`]; it sends `seq + 1` first and never a
//! number at or below it) and, where its owner makes the numbers durable ahead of use, the
//! highest it may send ([`Resume::seq_reserved`]). It reports where it stands every so many
//! packets or milliseconds ([`Checkpoint`]), so the owner can move the reservation on before
//! the SA reaches it, and on request ([`SaState`]).

use core::fmt;
use core::net::IpAddr;

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::ids::{SaId, Spi};
use crate::policy::Prefix;

/// Length of the RFC 4106 salt, taken from the end of the keying material.
pub const SALT_LEN: usize = 4;

/// A direction of an SA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

/// The AEAD algorithm of an SA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AeadAlg {
    /// AES-128-GCM with a 16-byte ICV (IKEv2 transform ENCR_AES_GCM_16, 128-bit key).
    AesGcm128,
    /// AES-256-GCM with a 16-byte ICV (IKEv2 transform ENCR_AES_GCM_16, 256-bit key).
    AesGcm256,
}

impl AeadAlg {
    /// Length of the AES key in bytes (without the RFC 4106 salt).
    pub const fn key_len(self) -> usize {
        match self {
            AeadAlg::AesGcm128 => 16,
            AeadAlg::AesGcm256 => 32,
        }
    }
}

impl fmt::Display for AeadAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AeadAlg::AesGcm128 => "aes128-gcm16",
            AeadAlg::AesGcm256 => "aes256-gcm16",
        })
    }
}

/// AES in CBC mode with an explicit 16-byte IV per packet (RFC 3602; IKEv2 ENCR_AES_CBC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CbcAlg {
    AesCbc128,
    AesCbc256,
}

impl CbcAlg {
    /// Length of the AES key in bytes.
    pub const fn key_len(self) -> usize {
        match self {
            CbcAlg::AesCbc128 => 16,
            CbcAlg::AesCbc256 => 32,
        }
    }
}

/// The HMAC integrity algorithm of a non-AEAD SA, with the ICV truncation its RFC fixes
/// (RFC 2404 for SHA-1, RFC 4868 for SHA-2; IKEv2 AUTH_HMAC_*).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IntegAlg {
    /// HMAC-SHA1-96: weak (SHA-1), only for peers that offer nothing else.
    HmacSha1_96,
    HmacSha256_128,
    HmacSha384_192,
    HmacSha512_256,
}

impl IntegAlg {
    /// Key length in bytes: the hash's output length (RFC 2404 2, RFC 4868 2.1.1).
    pub const fn key_len(self) -> usize {
        match self {
            IntegAlg::HmacSha1_96 => 20,
            IntegAlg::HmacSha256_128 => 32,
            IntegAlg::HmacSha384_192 => 48,
            IntegAlg::HmacSha512_256 => 64,
        }
    }

    /// ICV length in bytes: the HMAC output truncated to half (SHA-2) or 96 bits (SHA-1).
    pub const fn icv_len(self) -> usize {
        match self {
            IntegAlg::HmacSha1_96 => 12,
            IntegAlg::HmacSha256_128 => 16,
            IntegAlg::HmacSha384_192 => 24,
            IntegAlg::HmacSha512_256 => 32,
        }
    }

    /// SHA-1 based: accepted only where configured, and warned about.
    pub const fn is_weak(self) -> bool {
        matches!(self, IntegAlg::HmacSha1_96)
    }
}

impl fmt::Display for IntegAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // strongSwan's proposal keywords.
        f.write_str(match self {
            IntegAlg::HmacSha1_96 => "sha1",
            IntegAlg::HmacSha256_128 => "sha256",
            IntegAlg::HmacSha384_192 => "sha384",
            IntegAlg::HmacSha512_256 => "sha512",
        })
    }
}

/// The ESP transform of an SA: an AEAD, or AES-CBC with an HMAC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EspAlg {
    Aead(AeadAlg),
    Cbc(CbcAlg, IntegAlg),
}

/// Longest integrity key (HMAC-SHA-512).
pub const MAX_INTEG_KEY_LEN: usize = 64;

impl EspAlg {
    /// Length of the cipher key (without a salt).
    pub const fn key_len(self) -> usize {
        match self {
            EspAlg::Aead(a) => a.key_len(),
            EspAlg::Cbc(c, _) => c.key_len(),
        }
    }

    /// Length of the keying material one direction takes: key and salt (AEAD, RFC 4106 8.1),
    /// or cipher key and integrity key (RFC 7296 2.17: encryption key first).
    pub const fn keymat_len(self) -> usize {
        match self {
            EspAlg::Aead(a) => a.key_len() + SALT_LEN,
            EspAlg::Cbc(c, i) => c.key_len() + i.key_len(),
        }
    }

    /// Whether the transform is one only configured on purpose (HMAC-SHA1).
    pub const fn is_weak(self) -> bool {
        match self {
            EspAlg::Aead(_) => false,
            EspAlg::Cbc(_, i) => i.is_weak(),
        }
    }
}

impl From<AeadAlg> for EspAlg {
    fn from(a: AeadAlg) -> EspAlg {
        EspAlg::Aead(a)
    }
}

impl fmt::Display for EspAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EspAlg::Aead(a) => a.fmt(f),
            EspAlg::Cbc(CbcAlg::AesCbc128, i) => write!(f, "aes128-{i}"),
            EspAlg::Cbc(CbcAlg::AesCbc256, i) => write!(f, "aes256-{i}"),
        }
    }
}

/// Keying material of the wrong length for its algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("key material is {got} bytes, the algorithm needs {expected} (key + 4-byte salt, or cipher key + integrity key)")]
pub struct KeymatLength {
    pub expected: usize,
    pub got: usize,
}

/// Key material of one SA direction: the cipher key, and the 4-byte GCM salt (RFC 4106
/// section 8.1) or the HMAC key. Zeroized on drop; `Debug` never shows it.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SaKeys {
    #[zeroize(skip)]
    pub alg: EspAlg,
    key: [u8; 32],
    /// AEAD only (all zero for CBC).
    pub salt: [u8; SALT_LEN],
    /// CBC only: the HMAC key, on the heap so that a GCM SA's record stays its old size.
    integ: Option<IntegKey>,
}

/// A boxed HMAC key, zeroized in place.
#[derive(Clone)]
struct IntegKey(Box<[u8; MAX_INTEG_KEY_LEN]>);

impl Zeroize for IntegKey {
    fn zeroize(&mut self) {
        self.0.zeroize();
    }
}

impl SaKeys {
    /// From the KEYMAT slice IKEv2 or a static config yields: key followed by salt (AEAD), or
    /// cipher key followed by integrity key (CBC + HMAC).
    pub fn from_keymat(alg: impl Into<EspAlg>, keymat: &[u8]) -> Result<Self, KeymatLength> {
        let alg = alg.into();
        let wrong = KeymatLength {
            expected: alg.keymat_len(),
            got: keymat.len(),
        };
        if keymat.len() != alg.keymat_len() {
            return Err(wrong);
        }
        let klen = alg.key_len();
        let (Some(k), Some(rest)) = (keymat.get(..klen), keymat.get(klen..)) else {
            return Err(wrong);
        };
        let mut keys = SaKeys {
            alg,
            key: [0; 32],
            salt: [0; SALT_LEN],
            integ: None,
        };
        if let Some(dst) = keys.key.get_mut(..klen) {
            dst.copy_from_slice(k);
        }
        match alg {
            EspAlg::Aead(_) => {
                let Ok(salt) = <[u8; SALT_LEN]>::try_from(rest) else {
                    return Err(wrong);
                };
                keys.salt = salt;
            }
            EspAlg::Cbc(..) => {
                let mut integ = Box::new([0u8; MAX_INTEG_KEY_LEN]);
                match integ.get_mut(..rest.len()) {
                    Some(dst) => dst.copy_from_slice(rest),
                    None => return Err(wrong),
                }
                keys.integ = Some(IntegKey(integ));
            }
        }
        Ok(keys)
    }

    /// The cipher key.
    pub fn key(&self) -> &[u8] {
        self.key.get(..self.alg.key_len()).unwrap_or(&[])
    }

    /// The HMAC key (empty for an AEAD).
    pub fn integ_key(&self) -> &[u8] {
        match self.alg {
            EspAlg::Aead(_) => &[],
            EspAlg::Cbc(_, i) => self
                .integ
                .as_ref()
                .and_then(|k| k.0.get(..i.key_len()))
                .unwrap_or(&[]),
        }
    }
}

impl fmt::Debug for SaKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SaKeys({:?}, <redacted>)", self.alg)
    }
}

/// RFC 3948 UDP encapsulation ports of an SA (4500 on both sides unless a NAT moved them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpEncap {
    pub local_port: u16,
    pub remote_port: u16,
}

/// Byte and packet lifetimes of one SA direction (RFC 4301 4.4.2.1); 0 is no limit. The soft
/// limit asks the control plane to rekey; at the hard limit the SA stops carrying traffic.
/// Time lifetimes are the control plane's (it knows when it installed the SA).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lifetime {
    pub soft_bytes: u64,
    pub hard_bytes: u64,
    pub soft_packets: u64,
    pub hard_packets: u64,
}

/// Most words a [`ReplayState`] holds: a window of 4096 packets.
pub const MAX_REPLAY_WORDS: usize = 64;

/// An inbound SA's anti-replay window as data: the highest authenticated sequence number and
/// which of the numbers at and below it were received. Bit `i` (word `i / 64`, bit `i % 64`)
/// stands for sequence number `top - i`; the window is `64 * seen.len()` packets wide.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayState {
    pub top: u64,
    pub seen: Vec<u64>,
}

/// Where an SA continues from when it is installed: a fresh SA by default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resume {
    /// Outbound: the last sequence number already used under this key (0: none). The SA sends
    /// `seq + 1` first, and never a number at or below `seq`.
    pub seq: u64,
    /// Outbound: the highest sequence number the SA may send, a reservation its owner made
    /// durable (None: only the protocol's limit). Raised later by `Update::ReserveSeq`.
    pub seq_reserved: Option<u64>,
    /// Outbound: hold what is sealed in the first `hold_us` microseconds after the first
    /// packet, then send it in order (0: no hold). A cluster edge that takes over a client's
    /// outbound SA at a move gets a few milliseconds, so that what the old edge sealed before
    /// the LAN's route flipped reaches the client before the new edge's higher numbers
    /// (`docs/architecture.md`, "Packets lost at a move").
    pub hold_us: u32,
    /// Inbound: the anti-replay window to continue from (None: an empty one).
    pub replay: Option<ReplayState>,
}

/// When an outbound SA reports its sequence number (`Event::SeqCheckpoint`): after every
/// `packets` sequence numbers used, and every `millis` milliseconds while it has sent anything
/// new (or is held at its reservation). 0 turns either off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checkpoint {
    pub packets: u64,
    pub millis: u64,
}

impl Checkpoint {
    /// No checkpoints.
    pub const OFF: Checkpoint = Checkpoint {
        packets: 0,
        millis: 0,
    };
}

/// One SA direction, as the SAD keys it: inbound by SPI, outbound by id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaRef {
    Inbound(Spi),
    Outbound(SaId),
}

/// The runtime state of one SA direction, as a worker exports it (`Update::ExportSa`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SaState {
    /// The last sequence number used and the reservation (as in [`Resume`]).
    Outbound {
        seq: u64,
        seq_reserved: Option<u64>,
    },
    Inbound {
        replay: ReplayState,
    },
}

/// Everything needed to build one direction of a tunnel-mode SA.
#[derive(Clone, Debug)]
pub struct SaParams {
    pub id: SaId,
    pub spi: Spi,
    pub keys: SaKeys,
    pub esn: bool,
    /// Anti-replay window in packets (inbound only; 64..=4096, a power of two).
    pub replay_window: u32,
    /// Tunnel endpoints: our address and the peer's.
    pub local: IpAddr,
    pub remote: IpAddr,
    pub encap: Option<UdpEncap>,
    /// Inner traffic this SA may carry: source and destination prefixes as seen in the
    /// outbound direction (local side first). Inbound checks the mirror image.
    pub local_ts: Prefix,
    pub remote_ts: Prefix,
    /// TTL / hop limit of the outer header.
    pub outer_ttl: u8,
    /// Soft and hard byte/packet lifetimes (0: none).
    pub lifetime: Lifetime,
    /// The state the SA continues from (sequence number, reservation, replay window).
    pub resume: Resume,
    /// Outbound: when the SA reports its sequence number (None: the worker's default).
    /// Inbound: Some (any value) watches for the SA's first authentic packet, reported as an
    /// unasked `Event::SaState` (generation 0) with the window after it (a cluster edge's
    /// copy of an SA whose client is at another edge).
    pub checkpoint: Option<Checkpoint>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_never_show_in_debug_and_lengths_are_checked() {
        let k = SaKeys::from_keymat(AeadAlg::AesGcm128, &[0xab; 20]).unwrap();
        let s = format!("{k:?}");
        assert!(!s.contains("ab") && !s.contains("171"), "{s}");
        assert_eq!(k.key(), &[0xab; 16]);
        assert_eq!(k.salt, [0xab; 4]);
        assert_eq!(
            SaKeys::from_keymat(AeadAlg::AesGcm256, &[0; 20]).err(),
            Some(KeymatLength {
                expected: 36,
                got: 20
            })
        );
        for n in [0, 3, 16, 19, 21] {
            assert!(SaKeys::from_keymat(AeadAlg::AesGcm128, &vec![1; n]).is_err());
        }
    }

    #[test]
    fn cbc_keymat_is_cipher_key_then_integrity_key() {
        let alg = EspAlg::Cbc(CbcAlg::AesCbc256, IntegAlg::HmacSha384_192);
        let keymat: Vec<u8> = (0..80u8).collect();
        let k = SaKeys::from_keymat(alg, &keymat).unwrap();
        assert_eq!(k.key(), &keymat[..32]);
        assert_eq!(k.integ_key(), &keymat[32..]);
        assert_eq!(k.salt, [0; SALT_LEN]);
        let s = format!("{k:?}");
        assert!(!s.contains("33") && !s.contains("0x"), "{s}");
        assert_eq!(
            SaKeys::from_keymat(alg, &keymat[..79]).err(),
            Some(KeymatLength {
                expected: 80,
                got: 79
            })
        );
        assert!(SaKeys::from_keymat(alg, &[0; 81]).is_err());
        assert_eq!(alg.to_string(), "aes256-sha384");
        assert!(EspAlg::Cbc(CbcAlg::AesCbc128, IntegAlg::HmacSha1_96).is_weak());
        assert!(!alg.is_weak());
        // The GCM names are unchanged (they are hashed into sequence-state records).
        assert_eq!(EspAlg::from(AeadAlg::AesGcm256).to_string(), "aes256-gcm16");
    }
}
