//! SA records as the fast path sees them: hot per-direction runtime records, built from the
//! parameters the control plane sends (`proto::sa::SaParams`, re-exported here).
//!
//! A worker owns its records outright (no locks, no atomics besides its own counters). The
//! hot fields come first and the records are cache-line aligned with their size asserted at
//! compile time, after VPP's `ipsec_sa.h`; names, lifetimes and selectors of the cold record
//! stay in the control plane.

use core::net::IpAddr;
use std::sync::Arc;

use crate::crypto::cbc::{RandomError, CBC_IV_LEN};
use crate::crypto::{self, Aead, Backend, CbcHmac, EspAlg, IvGen, KeyError, SALT_LEN, TAG_LEN};
use crate::esp::replay::{BadReplayState, BadWindowSize, ReplayWindow};
use crate::ids::{SaId, Spi};
use crate::spd::Prefix;
use crate::stats::{DropReason, SaCounters};

pub use proto::sa::{Checkpoint, SaKeys, SaParams, UdpEncap};

/// Both tunnel endpoints of one family.
fn check_family(p: &SaParams) -> Result<(), SaBuildError> {
    if p.local.is_ipv4() != p.remote.is_ipv4() {
        return Err(SaBuildError::MixedFamilies);
    }
    Ok(())
}

/// Why an SA could not be built from its parameters.
#[derive(Debug, thiserror::Error)]
pub enum SaBuildError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Window(#[from] BadWindowSize),
    #[error("tunnel endpoints mix IPv4 and IPv6")]
    MixedFamilies,
    #[error("SPI 0 is reserved")]
    ZeroSpi,
    #[error(transparent)]
    ReplayState(#[from] BadReplayState),
    #[error("resumes after sequence number {seq}, beyond the SA's last one ({limit})")]
    SeqBeyondLimit { seq: u64, limit: u64 },
    #[error("no IV key for the AES-CBC SA: {0}")]
    Random(#[from] RandomError),
}

/// The transform of one SA direction. GCM, the common case, keeps the layout it always had (a
/// boxed [`Aead`] in the record's hot line); a CBC SA's state, larger and with its own IV
/// generator, sits behind one more pointer, so that it grows no record.
pub enum EspCipher {
    Aead(Box<dyn Aead>),
    Cbc(Box<CbcSa>),
}

/// AES-CBC + HMAC state of one SA direction.
pub struct CbcSa {
    pub imp: Box<dyn CbcHmac>,
    /// Outbound only: where the packets' IVs come from.
    pub iv: Option<IvGen>,
    /// ICV length of the integrity algorithm.
    pub icv_len: usize,
}

impl EspCipher {
    /// Builds the transform for `p`'s keys; `outbound` SAs of CBC get an IV generator.
    pub fn new(backend: Backend, keys: &SaKeys, outbound: bool) -> Result<EspCipher, SaBuildError> {
        Ok(match keys.alg {
            EspAlg::Aead(a) => EspCipher::Aead(crypto::new_aead(backend, a, keys.key())?),
            EspAlg::Cbc(c, i) => EspCipher::Cbc(Box::new(CbcSa {
                imp: crypto::new_cbc_hmac(backend, c, keys.key(), i, keys.integ_key())?,
                iv: if outbound {
                    Some(IvGen::random()?)
                } else {
                    None
                },
                icv_len: i.icv_len(),
            })),
        })
    }

    /// Bytes of key state (perf lab footprint).
    pub fn state_bytes(&self) -> usize {
        match self {
            EspCipher::Aead(a) => a.state_bytes(),
            EspCipher::Cbc(c) => {
                core::mem::size_of::<CbcSa>()
                    + c.imp.state_bytes()
                    + c.iv.as_ref().map_or(0, IvGen::state_bytes)
            }
        }
    }

    /// Prefetches the key state a packet of `len` bytes reads (see [`Aead::prefetch`]).
    #[inline]
    pub fn prefetch(&self, len: usize) {
        match self {
            EspCipher::Aead(a) => a.prefetch(len),
            EspCipher::Cbc(c) => c.imp.prefetch(),
        }
    }

    /// The backend that runs it.
    pub fn backend(&self) -> Backend {
        match self {
            EspCipher::Aead(a) => a.backend(),
            EspCipher::Cbc(c) => c.imp.backend(),
        }
    }

    /// Explicit IV bytes on the wire.
    #[inline]
    pub fn iv_len(&self) -> usize {
        match self {
            EspCipher::Aead(_) => crypto::IV_LEN,
            EspCipher::Cbc(_) => CBC_IV_LEN,
        }
    }

    /// ICV bytes on the wire.
    #[inline]
    pub fn icv_len(&self) -> usize {
        match self {
            EspCipher::Aead(_) => TAG_LEN,
            EspCipher::Cbc(c) => c.icv_len,
        }
    }

    /// What header, IV, padded plaintext and trailer must align to: 4 for GCM (RFC 4303 2.4),
    /// the AES block for CBC (RFC 3602 2.4).
    #[inline]
    pub fn align(&self) -> usize {
        match self {
            EspCipher::Aead(_) => 4,
            EspCipher::Cbc(_) => crypto::cbc::BLOCK_LEN,
        }
    }
}

impl core::fmt::Debug for EspCipher {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            EspCipher::Aead(a) => a.fmt(f),
            EspCipher::Cbc(c) => c.imp.fmt(f),
        }
    }
}

/// How many sequence numbers before the last one an outbound SA asks for a rekey: 16 M
/// packets, 1.6 s at 10 Mpps on one SA.
pub const SEQ_WARN_BEFORE: u64 = 1 << 24;

/// The last sequence number an SA may send: 2^32-1 without ESN (RFC 4303 3.3.3: never wrap;
/// the SA must be rekeyed), 2^64-1 with it.
pub const fn seq_limit(esn: bool) -> u64 {
    if esn {
        u64::MAX
    } else {
        u32::MAX as u64
    }
}

/// How an ESP packet arrived: bare (IP protocol 50) or in UDP (RFC 3948).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encap {
    Bare,
    Udp,
}

/// Which encapsulation an inbound SA accepts ESP in.
///
/// An SA accepts only the encapsulation it was negotiated (or configured) with: ESP that
/// arrives otherwise was not sent by the peer as the SA says, and accepting it would let
/// anyone who can reach one of our ports but not the other (a filter, a NAT) feed the SA's
/// replay window and decryption. The one exception is MOBIKE (RFC 4555 3.5, 4.2.1: an
/// UPDATE_SA_ADDRESSES re-runs NAT detection and turns UDP encapsulation on or off): once a
/// move changed the encapsulation of the peer's SAs, packets the peer sent before it processed
/// the update still arrive in the old one, and both are accepted from then on
/// ([`EncapRule::Either`], set by the worker when it rebinds the outbound SAs).
///
/// Not done: RFC 7296 2.23 asks an IKE peer using port 4500 to understand UDP-encapsulated ESP
/// even on an SA negotiated without NAT. The data plane cannot tell such an SA from a static
/// plain one, and the peers roamgate meets (strongSwan, Linux) encapsulate only when NAT was
/// detected or forced (which the NAT detection payloads then say), so a plain SA stays plain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncapRule {
    Only(Encap),
    Either,
}

impl EncapRule {
    /// The rule of an SA negotiated with `encap`.
    pub fn of(encap: Option<UdpEncap>) -> EncapRule {
        EncapRule::Only(if encap.is_some() {
            Encap::Udp
        } else {
            Encap::Bare
        })
    }

    #[inline]
    pub fn accepts(self, e: Encap) -> bool {
        match self {
            EncapRule::Only(o) => o == e,
            EncapRule::Either => true,
        }
    }
}

/// Inbound runtime record. Hot fields first: what `open` touches per packet.
#[repr(C, align(64))]
pub struct InboundSa {
    pub salt: [u8; SALT_LEN],
    pub id: SaId,
    pub esn: bool,
    /// The encapsulation ESP for this SA must arrive in.
    pub accept: EncapRule,
    pub replay: ReplayWindow,
    pub cipher: EspCipher,
    pub counters: Arc<SaCounters>,
    // Post-decryption checks.
    /// Inner source must lie in `remote_ts`, inner destination in `local_ts`.
    pub local_ts: Prefix,
    pub remote_ts: Prefix,
    // Cold from here on: never read per packet (the packet brings its SPI).
    pub spi: Spi,
    /// The peer's address this SA was negotiated with (informational: inbound lookup never
    /// looks at the outer source, M1).
    pub remote: IpAddr,
}

impl InboundSa {
    /// The leading bytes of the record a packet reads (what a burst prefetches).
    pub const HOT_BYTES: usize = core::mem::offset_of!(InboundSa, spi);
}

impl OutboundSa {
    /// The leading bytes of the record a packet reads (what a burst prefetches).
    pub const HOT_BYTES: usize = core::mem::offset_of!(OutboundSa, checkpoint);
}

// What a packet reads comes before what it does not: two lines of either record.
const _: () = assert!(InboundSa::HOT_BYTES <= 128 && OutboundSa::HOT_BYTES <= 128);

const _: () = assert!(core::mem::size_of::<InboundSa>() <= 192);
const _: () = assert!(core::mem::align_of::<InboundSa>() == 64);

/// Largest outer header a template holds: IPv6 (40) + UDP (8).
pub const MAX_OUTER: usize = 48;

/// Outbound runtime record. Owned by exactly one worker: its sequence number, which is also
/// the GCM explicit IV, is never shared across cores.
#[repr(C, align(64))]
pub struct OutboundSa {
    /// Last sequence number used (64-bit; the low half goes on the wire).
    pub seq: u64,
    /// The highest sequence number it may send: the protocol's limit, or lower, the
    /// reservation its owner made durable. Only ever raised.
    seq_max: u64,
    /// The sequence number at which the worker next reports (a checkpoint, or the warning
    /// before the limit): one compare per packet.
    pub next_report: u64,
    pub spi: Spi,
    pub salt: [u8; SALT_LEN],
    pub esn: bool,
    pub ipv6: bool,
    pub encap: Option<UdpEncap>,
    pub outer_ttl: u8,
    /// The warning before the sequence limit went out.
    warned: bool,
    /// Installed with a hold (`Resume::hold_us`) that has not ended: what it seals waits in
    /// the worker (`worker::hold`). In what was padding: the hot bytes do not grow.
    pub holding: bool,
    pub id: SaId,
    pub cipher: EspCipher,
    /// The outer IP (+ UDP) header with per-packet fields zeroed; see [`OuterTemplate`].
    pub outer: OuterTemplate,
    pub counters: Arc<SaCounters>,
    /// When the SA reports its sequence number: its own, until the worker installing it
    /// settles it (a worker's default replaces `None`).
    pub checkpoint: Option<Checkpoint>,
    /// The hold's length (microseconds), counted from the first packet sealed.
    pub hold_us: u32,
    pub local: IpAddr,
    pub remote: IpAddr,
}

/// Which sequence-number reports are due (see [`OutboundSa::take_due_reports`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DueReports {
    /// The sequence number reached the warning before the limit: rekey.
    pub near_wrap: bool,
    /// A checkpoint: where the sequence numbers stand.
    pub checkpoint: bool,
}

/// A precomputed outer header (VPP keeps one per SA too): IPv4 or IPv6, then UDP when the SA
/// is encapsulated. Per packet only the length, TOS/traffic class, IPv4 identification and
/// checksum (and the UDP length) change; the IPv4 checksum of the fixed fields is summed once
/// here and finished with an RFC 1624 style update per packet.
#[derive(Clone, Copy, Debug)]
pub struct OuterTemplate {
    pub bytes: [u8; MAX_OUTER],
    pub len: u8,
    /// One's-complement sum (unfolded) of the IPv4 header with the varying fields zero.
    pub ipv4_sum: u32,
}

impl OuterTemplate {
    pub fn new(local: IpAddr, remote: IpAddr, encap: Option<UdpEncap>, ttl: u8) -> Self {
        let mut bytes = [0u8; MAX_OUTER];
        let udp = encap.is_some();
        let (ip_len, ipv4_sum) = match (local, remote) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let h = &mut bytes[..20];
                h[0] = 0x45;
                h[6] = 0x40; // DF
                h[8] = ttl;
                h[9] = if udp { 17 } else { 50 };
                h[12..16].copy_from_slice(&s.octets());
                h[16..20].copy_from_slice(&d.octets());
                let sum = h
                    .chunks(2)
                    .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
                    .sum();
                (20, sum)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let h = &mut bytes[..40];
                h[0] = 0x60;
                h[6] = if udp { 17 } else { 50 };
                h[7] = ttl;
                h[8..24].copy_from_slice(&s.octets());
                h[24..40].copy_from_slice(&d.octets());
                (40, 0)
            }
            // Refused when the SA is built; an empty template never reaches the wire.
            _ => (0, 0),
        };
        if let Some(u) = encap {
            bytes[ip_len..ip_len + 2].copy_from_slice(&u.local_port.to_be_bytes());
            bytes[ip_len + 2..ip_len + 4].copy_from_slice(&u.remote_port.to_be_bytes());
        }
        OuterTemplate {
            bytes,
            len: (ip_len + if udp { 8 } else { 0 }) as u8,
            ipv4_sum,
        }
    }
}

const _: () = assert!(core::mem::size_of::<OutboundSa>() <= 192);
const _: () = assert!(core::mem::align_of::<OutboundSa>() == 64);

impl OutboundSa {
    /// Highest sequence number this SA may ever send (see [`seq_limit`]).
    pub fn seq_limit(&self) -> u64 {
        seq_limit(self.esn)
    }

    /// The highest sequence number it may send now.
    #[inline]
    pub fn seq_max(&self) -> u64 {
        self.seq_max
    }

    /// The reservation, when it is below the protocol's limit.
    pub fn seq_reserved(&self) -> Option<u64> {
        (self.seq_max < self.seq_limit()).then_some(self.seq_max)
    }

    /// Raises the reservation to `up_to` (never lowers it: a late or repeated reservation
    /// changes nothing).
    pub fn reserve(&mut self, up_to: u64) {
        self.seq_max = self.seq_max.max(up_to.min(self.seq_limit()));
    }

    /// Lowers the reservation to at most `ahead` past the last number used (never raises it).
    pub fn cap(&mut self, ahead: u64) {
        self.seq_max = self.seq_max.min(self.seq.saturating_add(ahead));
    }

    /// Why the next packet gets no sequence number: the protocol's limit is reached, or only
    /// the reservation.
    #[cold]
    pub fn seq_refusal(&self) -> DropReason {
        if self.seq >= self.seq_limit() {
            DropReason::SeqExhausted
        } else {
            DropReason::SeqNotReserved
        }
    }

    /// Settles when the SA reports its sequence number.
    pub fn set_checkpoint(&mut self, c: Checkpoint) {
        self.checkpoint = Some(c);
        self.schedule_report();
    }

    fn schedule_report(&mut self) {
        let next_checkpoint = match self.checkpoint {
            Some(c) if c.packets > 0 => self.seq.saturating_add(c.packets),
            _ => u64::MAX,
        };
        let warn_at = if self.warned {
            u64::MAX
        } else {
            self.seq_limit().saturating_sub(SEQ_WARN_BEFORE)
        };
        self.next_report = next_checkpoint.min(warn_at);
    }

    /// Called when `seq` reached `next_report`: what to report now, and the next report
    /// scheduled. A checkpoint goes with every report while checkpoints are on.
    pub fn take_due_reports(&mut self) -> DueReports {
        let near_wrap =
            !self.warned && self.seq >= self.seq_limit().saturating_sub(SEQ_WARN_BEFORE);
        self.warned |= near_wrap;
        let due = DueReports {
            near_wrap,
            checkpoint: self.checkpoint.is_some_and(|c| c.packets > 0),
        };
        self.schedule_report();
        due
    }

    /// Outer header bytes: IP (+ UDP).
    #[inline]
    pub fn outer_len(&self) -> usize {
        usize::from(self.outer.len)
    }

    /// Rebinds the tunnel endpoints (MOBIKE, NAT mapping change): same keys, same sequence.
    pub fn rebind(&mut self, local: IpAddr, remote: IpAddr, encap: Option<UdpEncap>) {
        self.local = local;
        self.remote = remote;
        self.ipv6 = local.is_ipv6();
        self.encap = encap;
        self.outer = OuterTemplate::new(local, remote, encap, self.outer_ttl);
    }
}

/// Builds the runtime records. Key schedules are expanded here, off the worker's fast path.
pub fn build_inbound(backend: Backend, p: &SaParams) -> Result<InboundSa, SaBuildError> {
    check_family(p)?;
    if p.spi.0 == 0 {
        return Err(SaBuildError::ZeroSpi);
    }
    let replay = match &p.resume.replay {
        Some(state) => ReplayWindow::resume(p.replay_window, p.esn, state)?,
        None => ReplayWindow::new(p.replay_window, p.esn)?,
    };
    let counters = Arc::new(SaCounters::with_lifetime(p.lifetime));
    if p.checkpoint.is_some() {
        // An inbound SA with a checkpoint reports its first authentic packet (a cluster edge's
        // copy of an SA whose client is at another edge: `Crossing::FirstUse`).
        counters.watch_first_use();
    }
    Ok(InboundSa {
        spi: p.spi,
        salt: p.keys.salt,
        id: p.id,
        esn: p.esn,
        accept: EncapRule::of(p.encap),
        replay,
        cipher: EspCipher::new(backend, &p.keys, false)?,
        counters,
        local_ts: p.local_ts,
        remote_ts: p.remote_ts,
        remote: p.remote,
    })
}

/// Builds an outbound record that continues after `p.resume.seq` (never sending it or a lower
/// number) up to its reservation. Its checkpoints are settled by the worker that installs it.
pub fn build_outbound(backend: Backend, p: &SaParams) -> Result<OutboundSa, SaBuildError> {
    check_family(p)?;
    if p.spi.0 == 0 {
        return Err(SaBuildError::ZeroSpi);
    }
    let limit = seq_limit(p.esn);
    if p.resume.seq > limit {
        return Err(SaBuildError::SeqBeyondLimit {
            seq: p.resume.seq,
            limit,
        });
    }
    let mut sa = OutboundSa {
        seq: p.resume.seq,
        seq_max: p.resume.seq_reserved.map_or(limit, |r| r.min(limit)),
        next_report: u64::MAX,
        spi: p.spi,
        salt: p.keys.salt,
        esn: p.esn,
        ipv6: p.local.is_ipv6(),
        encap: p.encap,
        outer_ttl: p.outer_ttl,
        warned: false,
        holding: p.resume.hold_us > 0,
        id: p.id,
        cipher: EspCipher::new(backend, &p.keys, true)?,
        outer: OuterTemplate::new(p.local, p.remote, p.encap, p.outer_ttl),
        counters: Arc::new(SaCounters::with_lifetime(p.lifetime)),
        checkpoint: p.checkpoint,
        hold_us: p.resume.hold_us,
        local: p.local,
        remote: p.remote,
    };
    sa.schedule_report();
    Ok(sa)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hot_records_fit_their_cache_lines() {
        // Three cache lines at most; printed so a change in size shows in the test log.
        let (i, o) = (
            core::mem::size_of::<InboundSa>(),
            core::mem::size_of::<OutboundSa>(),
        );
        println!(
            "InboundSa {i} bytes ({} per packet), OutboundSa {o} bytes ({} per packet), \
             SaCounters {} bytes",
            InboundSa::HOT_BYTES,
            OutboundSa::HOT_BYTES,
            core::mem::size_of::<SaCounters>()
        );
        assert!(i <= 192 && o <= 192);
        // The transform is one pointer pair either way: CBC grows no record.
        assert_eq!(
            core::mem::size_of::<EspCipher>(),
            core::mem::size_of::<Box<dyn Aead>>()
        );
        assert_eq!(i % 64, 0);
        assert_eq!(o % 64, 0);
    }
}
