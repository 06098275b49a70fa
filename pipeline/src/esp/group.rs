//! Group SAs in the data plane (RFC 9838 section 2.5, RFC 6054): one ESP SA, one AES-GCM key,
//! many senders. GCM must never see a nonce twice under one key, so the 64-bit explicit IV is
//! split: the sender's Sender-ID (allocated by the GCKS, unique per member under one key) in
//! the top `bits`, the sender's own counter below. Two senders differ in the top bits; one
//! sender never repeats its counter; so no IV repeats on the SA. Implicit-IV transforms are
//! never used with group SAs (section 2.7).
//!
//! ```text
//!  IV (64 bits) = | Sender-ID (bits) | counter (64 - bits) |
//!  ESP header   = | SPI | seq = low 32 bits of counter | IV | ciphertext | ICV |
//! ```
//!
//! Replay: one SA, a replay window per sender. The sequence number is the sender's own
//! counter (a group-wide counter cannot exist with many senders); the receiver reads the
//! Sender-ID from the IV, which the nonce authenticates (a changed IV fails the ICV), and
//! checks that sender's window; the window moves only after the ICV verified, and only then
//! is a window made for a sender not seen yet, so forged packets neither move nor create
//! windows. Why not one SA per sender (RFC 9838 allows both): one SA keeps one SPI, one SPD
//! entry and one key per group generation whatever the number of members, and a member that
//! joins needs no new SA at the others; the cost is a map lookup by Sender-ID per packet.
//!
//! Owns: the IV layout, a sender's IV counter, the per-sender windows.
//! Must never: hand out an IV twice; move a window on an unauthenticated packet.

use core::net::IpAddr;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::crypto::{
    esp_nonce, new_aead, Aead, Backend, EspAlg, KeyError, IV_LEN, SALT_LEN, TAG_LEN,
};
use crate::esp::replay::{ReplayError, ReplayWindow};
use crate::esp::sa::OuterTemplate;
use crate::ids::{SaId, Spi};
use crate::spd::Prefix;
use crate::stats::SaCounters;

pub use proto::group::{is_group_spi, GroupPeer, GroupSaParams};

/// Why a group SA could not be built from its parameters (`Update::AddGroupSa`).
#[derive(Debug, thiserror::Error)]
pub enum GroupBuildError {
    #[error("SPI {0} is not in the group range 0xff000000..=0xff7fffff")]
    NotGroupSpi(Spi),
    #[error("group SAs are AES-GCM only (RFC 6054 counter IVs)")]
    NotGcm,
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Group(#[from] GroupError),
    #[error("replay window {0}: 64..=4096, a power of two")]
    Window(u32),
}

/// One generation of a group SA as a worker holds it: the key, this member's IV counter
/// (None: receive only), the windows of the senders seen. Owned by one worker (the one the
/// SPI's worker bits name), never shared.
pub struct GroupSa {
    pub id: SaId,
    pub spi: Spi,
    pub salt: [u8; SALT_LEN],
    pub aead: Box<dyn Aead>,
    /// This member's IVs on the generation (None: it never sends on it).
    pub sender: Option<SenderIv>,
    pub replay: GroupReplay,
    /// The group's selectors: inner source and destination, both directions.
    pub src_ts: Prefix,
    pub dst_ts: Prefix,
    /// Packets opened on the generation, and its inbound drops.
    pub counters: Arc<SaCounters>,
    /// Packets sealed on it, and its outbound drops.
    pub out_counters: Arc<SaCounters>,
    /// The warning before the counter's end went out (`Event::SeqNearWrap`).
    pub warned: bool,
}

impl core::fmt::Debug for GroupSa {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("GroupSa")
            .field("id", &self.id)
            .field("spi", &self.spi)
            .field("sender", &self.sender)
            .field("senders_seen", &self.replay.senders())
            .finish_non_exhaustive()
    }
}

/// Builds a generation's runtime record (key schedule expanded here, off the worker).
pub fn build_group(backend: Backend, p: &GroupSaParams) -> Result<GroupSa, GroupBuildError> {
    if !is_group_spi(p.spi) {
        return Err(GroupBuildError::NotGroupSpi(p.spi));
    }
    let EspAlg::Aead(alg) = p.keys.alg else {
        return Err(GroupBuildError::NotGcm);
    };
    let sender = match p.sender_id {
        Some(id) => Some(SenderIv::new(id, p.sender_id_bits)?),
        None => {
            check_bits(p.sender_id_bits)?;
            None
        }
    };
    let replay = GroupReplay::new(p.sender_id_bits, p.replay_window).map_err(|e| match e {
        GroupError::Bits(_) if check_bits(p.sender_id_bits).is_ok() => {
            GroupBuildError::Window(p.replay_window)
        }
        e => GroupBuildError::Group(e),
    })?;
    Ok(GroupSa {
        id: p.id,
        spi: p.spi,
        salt: p.keys.salt,
        aead: new_aead(backend, alg, p.keys.key())?,
        sender,
        replay,
        src_ts: p.src_ts,
        dst_ts: p.dst_ts,
        counters: Arc::new(SaCounters::default()),
        out_counters: Arc::new(SaCounters::default()),
        warned: false,
    })
}

/// The tunnel endpoints of one group (`Update::SetGroupPeers`), prepared: peers ordered by
/// prefix length, longest first, so the first that holds a destination is the longest match.
/// Each peer's outer header is prepared once (bare ESP from `local`).
#[derive(Clone, Debug)]
pub struct GroupPeers {
    pub id: SaId,
    pub local: IpAddr,
    pub outer_ttl: u8,
    peers: Vec<(GroupPeer, OuterTemplate)>,
    /// The group's multicast address for GSA_REKEY: IKE datagrams to it are punted as if
    /// sent to our own address.
    pub rekey_multicast: Option<IpAddr>,
}

impl GroupPeers {
    /// Peers of another address family than `local` are left out (a tunnel has one family).
    pub fn new(id: SaId, local: IpAddr, outer_ttl: u8, peers: Vec<GroupPeer>) -> GroupPeers {
        let mut peers: Vec<(GroupPeer, OuterTemplate)> = peers
            .into_iter()
            .filter(|p| p.outer.is_ipv4() == local.is_ipv4())
            .map(|p| (p, OuterTemplate::new(local, p.outer, None, outer_ttl)))
            .collect();
        peers.sort_by_key(|p| core::cmp::Reverse(p.0.lan.prefix_len()));
        GroupPeers {
            id,
            local,
            outer_ttl,
            peers,
            rekey_multicast: None,
        }
    }

    /// With the group's rekey multicast address (a unicast one is ignored).
    pub fn with_rekey_multicast(mut self, a: Option<IpAddr>) -> GroupPeers {
        self.rekey_multicast = a.filter(IpAddr::is_multicast);
        self
    }

    /// The outer header toward the member whose LAN holds `dst` (longest prefix), if any.
    #[inline]
    pub fn outer_for(&self, dst: IpAddr) -> Option<&OuterTemplate> {
        self.peers
            .iter()
            .find(|(p, _)| p.lan.contains(dst))
            .map(|(_, t)| t)
    }

    pub fn peers(&self) -> impl Iterator<Item = &GroupPeer> {
        self.peers.iter().map(|(p, _)| p)
    }
}

/// Sender-ID widths the GCKS may choose (GWP_SENDER_ID_BITS).
pub const MAX_SENDER_ID_BITS: u8 = 16;

const ESP_HDR: usize = 8;

/// What is wrong with a group SA's parameters or a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error("sender-id bits {0}: 1 to 16")]
    Bits(u8),
    #[error("sender-id {id} does not fit in {bits} bits")]
    SenderId { id: u32, bits: u8 },
    #[error("the sender's IV counter is used up: rekey")]
    Exhausted,
    #[error("packet too short")]
    Short,
    #[error("sequence number and IV counter disagree")]
    SeqMismatch,
    #[error("replay: {0:?}")]
    Replay(ReplayError),
    #[error("integrity check failed")]
    Integrity,
}

/// The IV of Sender-ID `sender` (in `bits`) and `counter`.
pub fn iv(sender: u32, bits: u8, counter: u64) -> [u8; IV_LEN] {
    let shift = 64u32.saturating_sub(u32::from(bits));
    (u64::from(sender).checked_shl(shift).unwrap_or(0) | counter).to_be_bytes()
}

/// The Sender-ID an IV carries.
pub fn sender_of(iv: &[u8; IV_LEN], bits: u8) -> u32 {
    let v = u64::from_be_bytes(*iv);
    u32::try_from(
        v.checked_shr(64u32.saturating_sub(u32::from(bits)))
            .unwrap_or(0),
    )
    .unwrap_or(0)
}

/// The sender's counter an IV carries.
pub fn counter_of(iv: &[u8; IV_LEN], bits: u8) -> u64 {
    u64::from_be_bytes(*iv) & counter_mask(bits)
}

fn counter_mask(bits: u8) -> u64 {
    u64::MAX.checked_shr(u32::from(bits)).unwrap_or(0)
}

fn check_bits(bits: u8) -> Result<(), GroupError> {
    if (1..=MAX_SENDER_ID_BITS).contains(&bits) {
        Ok(())
    } else {
        Err(GroupError::Bits(bits))
    }
}

/// One sender's IVs on a group SA: counters 1, 2, ... up to the last that fits below the
/// Sender-ID, then nothing (the member asks for a rekey long before).
#[derive(Clone, Debug)]
pub struct SenderIv {
    sender: u32,
    bits: u8,
    last: u64,
}

impl SenderIv {
    pub fn new(sender: u32, bits: u8) -> Result<SenderIv, GroupError> {
        check_bits(bits)?;
        if u64::from(sender) >> bits != 0 {
            return Err(GroupError::SenderId { id: sender, bits });
        }
        Ok(SenderIv {
            sender,
            bits,
            last: 0,
        })
    }

    /// The last counter this sender may use: the ESP sequence number is the counter and has
    /// 32 bits (no ESN on group SAs), and the counter must fit below the Sender-ID.
    pub fn limit(&self) -> u64 {
        counter_mask(self.bits).min(u64::from(u32::MAX))
    }

    /// The last counter used (0: none).
    pub fn last(&self) -> u64 {
        self.last
    }

    pub fn sender_id(&self) -> u32 {
        self.sender
    }

    pub fn bits(&self) -> u8 {
        self.bits
    }

    /// The next (sequence number, IV): the sequence number is the counter. Refused, for good,
    /// once the counter reached [`limit`](Self::limit): an IV is never handed out twice.
    pub fn take(&mut self) -> Result<(u64, [u8; IV_LEN]), GroupError> {
        let c = self
            .last
            .checked_add(1)
            .filter(|c| *c <= self.limit())
            .ok_or(GroupError::Exhausted)?;
        self.last = c;
        Ok((c, iv(self.sender, self.bits, c)))
    }

    #[cfg(test)]
    pub(crate) fn set_last(&mut self, last: u64) {
        self.last = last;
    }
}

/// Seals `plain` (inner packet, padding, pad length, next header) as the ESP part of a group
/// packet: `SPI | seq | IV | ciphertext | ICV`. AAD is SPI | seq (RFC 4106 section 5, no
/// ESN: a sender's counter stays far below 2^32 within a generation's lifetime here).
pub fn seal(
    aead: &dyn Aead,
    salt: &[u8; SALT_LEN],
    spi: u32,
    sender: &mut SenderIv,
    plain: &[u8],
) -> Result<Vec<u8>, GroupError> {
    let (seq, iv) = sender.take()?;
    let seq_lo = u32::try_from(seq & u64::from(u32::MAX)).unwrap_or(0);
    if seq > u64::from(u32::MAX) {
        return Err(GroupError::Exhausted);
    }
    let mut out = Vec::with_capacity(ESP_HDR + IV_LEN + plain.len() + TAG_LEN);
    out.extend_from_slice(&spi.to_be_bytes());
    out.extend_from_slice(&seq_lo.to_be_bytes());
    out.extend_from_slice(&iv);
    let mut aad = [0u8; 8];
    aad[..4].copy_from_slice(&spi.to_be_bytes());
    aad[4..].copy_from_slice(&seq_lo.to_be_bytes());
    let mut ct = plain.to_vec();
    let mut tag = [0u8; TAG_LEN];
    aead.seal_in_place(&esp_nonce(salt, &iv), &aad, &mut ct, &mut tag);
    out.extend_from_slice(&ct);
    out.extend_from_slice(&tag);
    Ok(out)
}

/// The inbound side of a group SA: a replay window per Sender-ID.
#[derive(Debug)]
pub struct GroupReplay {
    bits: u8,
    size: u32,
    windows: BTreeMap<u32, ReplayWindow>,
}

impl GroupReplay {
    /// `size` as for [`ReplayWindow::new`].
    pub fn new(bits: u8, size: u32) -> Result<GroupReplay, GroupError> {
        check_bits(bits)?;
        ReplayWindow::new(size, false).map_err(|_| GroupError::Bits(bits))?;
        Ok(GroupReplay {
            bits,
            size,
            windows: BTreeMap::new(),
        })
    }

    /// Senders with a window (seen with a valid ICV).
    pub fn senders(&self) -> usize {
        self.windows.len()
    }

    /// Opens the ESP part of a group packet: (Sender-ID, plaintext). The window of the
    /// sender is checked before and moved after the ICV.
    pub fn open(
        &mut self,
        aead: &dyn Aead,
        salt: &[u8; SALT_LEN],
        pkt: &[u8],
    ) -> Result<(u32, Vec<u8>), GroupError> {
        let mut buf = pkt.to_vec();
        let sender = self.open_in_place(aead, salt, &mut buf)?;
        buf.truncate(buf.len() - TAG_LEN);
        buf.drain(..ESP_HDR + IV_LEN);
        Ok((sender, buf))
    }

    /// [`open`](Self::open) in place: `pkt` (SPI | seq | IV | ciphertext | ICV) holds the
    /// plaintext between IV and ICV afterwards; returns the Sender-ID.
    pub fn open_in_place(
        &mut self,
        aead: &dyn Aead,
        salt: &[u8; SALT_LEN],
        pkt: &mut [u8],
    ) -> Result<u32, GroupError> {
        if pkt.len() < ESP_HDR + IV_LEN + TAG_LEN {
            return Err(GroupError::Short);
        }
        let (hdr, rest) = pkt.split_at_mut(ESP_HDR);
        let (ivb, rest) = rest.split_at_mut(IV_LEN);
        let ct_len = rest.len() - TAG_LEN;
        let (ct, tagb) = rest.split_at_mut(ct_len);
        let mut iv = [0u8; IV_LEN];
        iv.copy_from_slice(ivb);
        let mut seq = [0u8; 4];
        seq.copy_from_slice(&hdr[4..8]);
        let seq_lo = u32::from_be_bytes(seq);
        if counter_of(&iv, self.bits) != u64::from(seq_lo) {
            return Err(GroupError::SeqMismatch);
        }
        let sender = sender_of(&iv, self.bits);
        let s = match self.windows.get(&sender) {
            Some(w) => w.check(seq_lo).map_err(GroupError::Replay)?,
            None if seq_lo == 0 => return Err(GroupError::Replay(ReplayError::Zero)),
            None => u64::from(seq_lo),
        };
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(tagb);
        aead.open_in_place(&esp_nonce(salt, &iv), &hdr[..8], ct, &tag)
            .map_err(|_| GroupError::Integrity)?;
        let w = match self.windows.entry(sender) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => e.insert(
                ReplayWindow::new(self.size, false).map_err(|_| GroupError::Bits(self.bits))?,
            ),
        };
        w.advance(s).map_err(GroupError::Replay)?;
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{new_aead, AeadAlg, Backend};

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    const SALT: [u8; 4] = [0xde, 0xad, 0xbe, 0xef];
    const SPI: u32 = 0xff00_0001;
    /// inner "roamgate group sa", padding 1 2 3, pad length 3, next header 4.
    const PLAIN: &[u8] = b"roamgate group sa\x01\x02\x03\x03\x04";

    fn aead() -> Box<dyn Aead> {
        let key: Vec<u8> = (0u8..16).collect();
        new_aead(Backend::Ring, AeadAlg::AesGcm128, &key).unwrap()
    }

    #[test]
    fn iv_layout() {
        assert_eq!(iv(5, 8, 1), [5, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(iv(0xabc, 12, 0x2_0000_0001), [0xab, 0xc0, 0, 2, 0, 0, 0, 1]);
        assert_eq!(iv(1, 1, 7), [0x80, 0, 0, 0, 0, 0, 0, 7]);
        assert_eq!(sender_of(&iv(0xabc, 12, 99), 12), 0xabc);
        assert_eq!(counter_of(&iv(0xabc, 12, 99), 12), 99);
        assert_eq!(
            SenderIv::new(256, 8).unwrap_err(),
            GroupError::SenderId { id: 256, bits: 8 }
        );
        assert_eq!(SenderIv::new(0, 17).unwrap_err(), GroupError::Bits(17));
    }

    /// Known answers computed with an independent AES-GCM (Python `cryptography`): key
    /// 00..0f, salt deadbeef, SPI ff000001, 8 Sender-ID bits, senders 5 and 6, counter 1.
    #[test]
    fn known_vectors() {
        let a = aead();
        let want5 = hex("ff000001000000010500000000000001ca47193b2e091271f631a4a369f6190ef582561e79ba5092d9cf8fea7ed8dc871b7d30a8d5bc");
        let want6 = hex("ff000001000000010600000000000001873e28e7e620e82bd0d9b47ec66bc01a337eea4f05a5fe4740eb27d4486995130084adaadbd1");
        let mut s5 = SenderIv::new(5, 8).unwrap();
        let mut s6 = SenderIv::new(6, 8).unwrap();
        assert_eq!(seal(a.as_ref(), &SALT, SPI, &mut s5, PLAIN).unwrap(), want5);
        assert_eq!(seal(a.as_ref(), &SALT, SPI, &mut s6, PLAIN).unwrap(), want6);
        let mut r = GroupReplay::new(8, 64).unwrap();
        assert_eq!(
            r.open(a.as_ref(), &SALT, &want5).unwrap(),
            (5, PLAIN.to_vec())
        );
        assert_eq!(
            r.open(a.as_ref(), &SALT, &want6).unwrap(),
            (6, PLAIN.to_vec())
        );
    }

    #[test]
    fn no_iv_repeats_across_senders_and_counters_end() {
        let mut seen = std::collections::HashSet::new();
        for s in 0..16u32 {
            let mut g = SenderIv::new(s, 4).unwrap();
            for _ in 0..5_000 {
                assert!(seen.insert(g.take().unwrap().1));
            }
        }
        // The counter ends at the 32-bit sequence number's end (no ESN on group SAs).
        let mut g = SenderIv::new(3, 16).unwrap();
        g.set_last(u64::from(u32::MAX) - 1);
        let (seq, last) = g.take().unwrap();
        assert_eq!(seq, u64::from(u32::MAX));
        assert_eq!(last, [0, 3, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(g.take().unwrap_err(), GroupError::Exhausted);
        assert_eq!(g.take().unwrap_err(), GroupError::Exhausted);
    }

    /// Each sender has its own window: the same sequence number from two senders is fine,
    /// a replay from one is not, and a forged packet neither moves nor makes a window.
    #[test]
    fn replay_windows_per_sender() {
        let a = aead();
        let mut s1 = SenderIv::new(1, 8).unwrap();
        let mut s2 = SenderIv::new(2, 8).unwrap();
        let mut r = GroupReplay::new(8, 64).unwrap();
        let p1 = seal(a.as_ref(), &SALT, SPI, &mut s1, PLAIN).unwrap();
        let p2 = seal(a.as_ref(), &SALT, SPI, &mut s2, PLAIN).unwrap();
        assert_eq!(r.open(a.as_ref(), &SALT, &p1).unwrap().0, 1);
        assert_eq!(r.open(a.as_ref(), &SALT, &p2).unwrap().0, 2);
        assert_eq!(
            r.open(a.as_ref(), &SALT, &p1).unwrap_err(),
            GroupError::Replay(ReplayError::Duplicate)
        );
        // Sender 3 forged from sender 1's packet (IV top bits changed): ICV fails, no window.
        let mut f = p1.clone();
        f[8] = 3;
        assert_eq!(
            r.open(a.as_ref(), &SALT, &f).unwrap_err(),
            GroupError::Integrity
        );
        assert_eq!(r.senders(), 2);
        // A sequence number that disagrees with the IV's counter.
        let mut m = seal(a.as_ref(), &SALT, SPI, &mut s1, PLAIN).unwrap();
        m[7] ^= 0x40;
        assert_eq!(
            r.open(a.as_ref(), &SALT, &m).unwrap_err(),
            GroupError::SeqMismatch
        );
        // Out of order within the window is fine, once.
        let q: Vec<_> = (0..5)
            .map(|_| seal(a.as_ref(), &SALT, SPI, &mut s2, PLAIN).unwrap())
            .collect();
        for p in q.iter().rev() {
            r.open(a.as_ref(), &SALT, p).unwrap();
        }
        for p in &q {
            assert!(r.open(a.as_ref(), &SALT, p).is_err());
        }
        for n in 0..p1.len() {
            let _ = r.open(a.as_ref(), &SALT, &p1[..n]);
        }
    }
}
