//! An SA as data: the parameters one direction of a tunnel-mode ESP SA is built from.
//!
//! This module owns [`SaParams`] and its parts: the AEAD algorithm, the key material
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

/// Keying material of the wrong length for its algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("key material is {got} bytes, the algorithm needs {expected} (key + 4-byte salt)")]
pub struct KeymatLength {
    pub expected: usize,
    pub got: usize,
}

/// Key material of one SA direction: AES key and the 4-byte GCM salt (RFC 4106 section 8.1).
/// Zeroized on drop; `Debug` never shows it.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SaKeys {
    #[zeroize(skip)]
    pub alg: AeadAlg,
    key: [u8; 32],
    pub salt: [u8; SALT_LEN],
}

impl SaKeys {
    /// From the KEYMAT slice IKEv2 or a static config yields: key followed by salt.
    pub fn from_keymat(alg: AeadAlg, keymat: &[u8]) -> Result<Self, KeymatLength> {
        let klen = alg.key_len();
        let (Some(k), Some(s)) = (keymat.get(..klen), keymat.get(klen..)) else {
            return Err(KeymatLength {
                expected: klen + SALT_LEN,
                got: keymat.len(),
            });
        };
        let Ok(salt) = <[u8; SALT_LEN]>::try_from(s) else {
            return Err(KeymatLength {
                expected: klen + SALT_LEN,
                got: keymat.len(),
            });
        };
        let mut key = [0u8; 32];
        if let Some(dst) = key.get_mut(..klen) {
            dst.copy_from_slice(k);
        }
        Ok(SaKeys { alg, key, salt })
    }

    pub fn key(&self) -> &[u8] {
        self.key.get(..self.alg.key_len()).unwrap_or(&[])
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
}
