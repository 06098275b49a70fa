//! GCM packets framed during the burst, sealed at its end.
//!
//! ipsec-mb's GCM reads the nonce, the AAD and the plaintext's first and last bytes with
//! masked vector loads, and a masked load cannot take its bytes from a store still in flight:
//! it waits until the store has reached the cache. Framing a packet (hop limit, checksum,
//! trailer, ESP header, IV, nonce and AAD) and sealing it at once made every seal wait for
//! the stores just made (`cargo bench -p roamgate-pipeline --bench aead -- seal-inputs`, 52 B:
//! 24 ns settled, 41 ns with the nonce just written, 37 ns with the AAD, 30 ns with the
//! trailer's last bytes; 25 ns with the nonce written eight seals ahead). So the worker's
//! main path does a GCM packet in two halves, as CBC packets are done ([`super::cbc_burst`]):
//! during the burst everything but the seal (checks, sequence number, trailer, ESP header,
//! counters, outer header, next hop: [`tunnel::frame_gcm`], [`tunnel::finish_gcm`]), the
//! frame parked here with its nonce and AAD; after the burst each parked packet is sealed
//! ([`tunnel::seal_gcm`]) and sent where its first half decided, in arrival order. In the
//! profile of one worker on in-memory ports (64 B, one SA) the seal fell from ~35 to ~21 ns
//! and the packet from 74.5 to 70.4 ns.
//!
//! The first half's common way (no hold, the WAN's next hop known: configured, or the
//! resolver's memo of the SA's peer) frames the packet with every header at once, Ethernet
//! included ([`tunnel::frame_gcm_eth`]): the frame grows at its front once instead of three
//! times, and the packet is parked to go to the WAN as it is, with no way to decide
//! (`perf point --dir encrypt --size 64`: 10.5 -> 11.6 Mpps with the outer template's fixed
//! copy). Otherwise the outer header goes on here and the Ethernet header by the worker's
//! way to the WAN ([`Worker::park_gcm`]).
//!
//! An IPv6 + UDP SA's UDP checksum covers the ciphertext (RFC 8200 8.1): its outer header
//! goes on before the seal without it, and it is filled in after the seal
//! ([`tunnel::udp6_checksum`]).
//!
//! Sequence numbers: taken when a packet is framed, so a packet that fails later is a gap,
//! never a repeat; the packets of one SA leave in the order of their numbers (they are parked
//! and sealed in order, and the LAN's and the hairpin's GCM seals are all parked). An SA
//! removed between the halves cannot happen (commands are applied between bursts); if it
//! did, the packet is dropped (`NoSa`).

use core::net::IpAddr;

use super::{Side, Verdict, Worker};
use crate::esp::sa::{EspCipher, OutboundSa};
use crate::esp::tunnel::{self, GcmFramed, InnerMeta};
use crate::ids::SaId;
use crate::port::{Frame, Port};
use crate::stats::{Crossing, DropReason};

/// An outbound GCM packet between its framing and its seal: parked by [`frame_into`]
/// (framed in place: the nonce and AAD are written here, where the seal reads them, as a
/// copy on the way would be a fresh store again), its way set by [`Worker::park_gcm`], its
/// frame added by the frame's dispatch (`Verdict::SealGcm`).
pub(super) struct SealGcm<F> {
    frame: Option<F>,
    id: SaId,
    framed: GcmFramed,
    then: AfterSeal,
}

/// Where a sealed packet goes (what its first half decided).
#[derive(Clone, Copy, Debug)]
pub(super) enum AfterSeal {
    ToWan,
    Resolve(IpAddr),
    Hold { until: u64, hop: Option<IpAddr> },
}

impl AfterSeal {
    #[inline]
    fn verdict(self) -> Verdict {
        match self {
            AfterSeal::ToWan => Verdict::ToWan,
            AfterSeal::Resolve(hop) => Verdict::Resolve(Side::Wan, hop),
            AfterSeal::Hold { until, hop } => Verdict::Hold { until, hop },
        }
    }
}

/// Frames the inner packet in `f` on outbound GCM SA `sa` (id `id`) into a newly parked
/// packet at the end of `seals`, with its lifetime count and outer header (the first half of
/// `tunnel::encapsulate`); a failure is counted on the SA and parks nothing. On success the
/// caller decides the packet's way and hands it to [`Worker::park_gcm`]; or, with the
/// Ethernet addresses `macs` (source, destination) of the WAN's next hop, the frame gets
/// its Ethernet header too and is parked to go to the WAN as it is
/// ([`tunnel::frame_gcm_eth`]).
#[inline(always)]
pub(super) fn frame_into<F: Frame>(
    seals: &mut Vec<SealGcm<F>>,
    sa: &mut OutboundSa,
    id: SaId,
    f: &mut F,
    meta: InnerMeta,
    macs: Option<([u8; 6], [u8; 6])>,
) -> Result<Option<Crossing>, DropReason> {
    seals.push(SealGcm {
        frame: None,
        id,
        framed: GcmFramed::default(),
        then: AfterSeal::ToWan,
    });
    let inner_len = f.len();
    let r = match seals.last_mut() {
        Some(slot) => match macs {
            Some(macs) => tunnel::frame_gcm_eth(sa, f, meta, &mut slot.framed, macs),
            None => tunnel::frame_gcm(sa, f, meta, &mut slot.framed)
                .and_then(|()| tunnel::finish_gcm(sa, f, inner_len, meta, false)),
        },
        None => Err(DropReason::CryptoFailed),
    };
    if let Err(r) = r {
        seals.pop();
        sa.counters.record_drop(r);
    }
    r
}

impl<P: Port> Worker<P> {
    /// The packet [`frame_into`] just framed goes the way of verdict `v`: parked for
    /// its seal (the verdict to return is then `SealGcm`), or not sent at all (unparked, `v`
    /// returned).
    #[inline]
    pub(super) fn park_gcm(&mut self, v: Verdict) -> Verdict {
        let Some(slot) = self.gcm_seals.last_mut() else {
            return v;
        };
        match v {
            // The common way, parked as such by `frame_into`: nothing is written. (Copying
            // an `AfterSeal` built on the stack moved its undefined bytes too, read with wide
            // loads from stack slots other code had just written narrowly: a store-forwarding
            // stall that took ~5 ns of a 64 B packet on an Intel Xeon.)
            Verdict::ToWan => Verdict::SealGcm,
            Verdict::Resolve(Side::Wan, hop) => {
                slot.then = AfterSeal::Resolve(hop);
                Verdict::SealGcm
            }
            Verdict::Hold { until, hop } => {
                slot.then = AfterSeal::Hold { until, hop };
                Verdict::SealGcm
            }
            _ => {
                self.gcm_seals.pop();
                v
            }
        }
    }

    /// The frame of the packet just parked ([`Self::park_gcm`]).
    #[inline]
    pub(super) fn park_gcm_frame(&mut self, f: P::Frame) {
        match self.gcm_seals.last_mut() {
            Some(s) if s.frame.is_none() => s.frame = Some(f),
            // A verdict without its parked packet: never made that way.
            _ => self.counters.record_drop(DropReason::CryptoFailed),
        }
    }

    /// Seals the parked GCM packets in order and sends each where its first half decided.
    /// Each is sealed where it is parked (moved out first, its nonce would be copied).
    pub(super) fn seal_gcm_burst(&mut self) {
        let mut seals = core::mem::take(&mut self.gcm_seals);
        for s in seals.iter_mut() {
            let Some(mut f) = s.frame.take() else {
                continue;
            };
            let r = match self.sad.outbound(s.id) {
                Some(sa) => match &sa.cipher {
                    EspCipher::Aead(c) => tunnel::seal_gcm(&**c, &mut f, &s.framed)
                        .and_then(|()| tunnel::udp6_checksum(sa, &mut f, &s.framed)),
                    EspCipher::Cbc(_) => Err(DropReason::CryptoFailed),
                },
                None => Err(DropReason::NoSa),
            };
            match (r, s.then) {
                (Ok(()), AfterSeal::ToWan) => self.wan_txq.push_back(f),
                (Ok(()), then) => self.dispatch(f, Side::Lan, then.verdict()),
                (Err(r), _) => {
                    if let Some(sa) = self.sad.outbound(s.id) {
                        sa.counters.record_drop(r);
                    }
                    self.counters.record_drop(r);
                }
            }
        }
        seals.clear();
        self.gcm_seals = seals;
    }
}
