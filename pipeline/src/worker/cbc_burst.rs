//! AES-CBC + HMAC packets sealed and opened a burst at a time.
//!
//! CBC encryption is serial within a packet, so one packet at a time leaves the multi-buffer
//! lanes of intel-ipsec-mb idle; the worker therefore does a CBC SA's packet in two halves:
//! during the burst everything up to the crypto (outbound: checks, sequence number, padding,
//! IV, [`tunnel::frame_cbc`]; inbound: checks up to the ICV, the replay window's pre-check,
//! [`tunnel::decapsulate_or_defer`]), the frame parked here with what the second half needs;
//! after the burst one [`cbc::seal_burst`] / [`cbc::open_burst`] for all of them (mixed SAs
//! and lengths), then each packet's second half in arrival order (outbound: lifetimes, outer
//! header, forward; inbound: the replay window's advance, the trailer, selectors, forward).
//!
//! Sequence numbers: a framed packet's number is taken from its SA when it is framed, so a
//! packet that fails later is a gap, never a repeat. The replay window advances only after the
//! ICV matched, in order: two copies of one number in a burst both pass the pre-check, the
//! second is refused at its advance. An SA removed between the halves cannot happen (commands
//! are applied between bursts); if it did, the packet is dropped (`NoSa` / `UnknownSpi`).
//! GCM packets are parked too, sealed one at a time ([`super::gcm_burst`]) before the CBC
//! batches; they may leave before a burst's CBC packets of other SAs.

use super::{Side, Verdict, Worker, BURST};
use crate::crypto::cbc::{self, CbcError, CbcJob};
use crate::esp::sa::EspCipher;
use crate::esp::tunnel::{self, CbcFramed, CbcOpen};
use crate::ids::SaId;
use crate::port::{Frame, Port};
use crate::stats::DropReason;

/// An outbound CBC packet between its framing and its seal.
#[derive(Clone, Copy, Debug)]
pub(super) struct SealLater {
    pub(super) id: SaId,
    pub(super) framed: CbcFramed,
    pub(super) outer_v6: bool,
    /// The seal's outcome, once the burst's batch ran.
    pub(super) result: Result<(), CbcError>,
}

/// An inbound CBC packet between its checks and its open; the frame's data starts at the ESP
/// header, `esp_at` bytes after the outer IP header.
#[derive(Clone, Copy, Debug)]
pub(super) struct OpenLater {
    pub(super) pending: CbcOpen,
    pub(super) esp_at: usize,
    pub(super) outer_ecn: u8,
    /// The open's outcome (ICV check and decryption), once the burst's batch ran.
    pub(super) result: Result<(), CbcError>,
}

impl<P: Port> Worker<P> {
    /// The burst's parked packets: CBC opens, then GCM and CBC seals, each kind in one batch
    /// (after the others: a burst may reorder packets of different SAs, never those of one SA).
    pub(super) fn finish_burst(&mut self, now: u64) {
        // Opens first: an opened packet may go out again sealed (a hairpin), parked for the
        // seals below.
        if !self.cbc_opens.is_empty() {
            self.open_cbc_burst(now);
        }
        // ICMP errors about what came from the WAN go out sealed with this burst.
        if !self.icmp_pending.is_empty() {
            self.flush_icmp_errors(now);
        }
        if !self.gcm_seals.is_empty() {
            self.seal_gcm_burst();
        }
        if !self.cbc_seals.is_empty() {
            self.seal_cbc_burst(now);
        }
    }

    /// Seals the burst's framed CBC packets in one batch, then finishes each in order.
    pub(super) fn seal_cbc_burst(&mut self, now: u64) {
        let mut seals = core::mem::take(&mut self.cbc_seals);
        for chunk in seals.chunks_mut(BURST) {
            let mut jobs: Vec<CbcJob<'_>> = Vec::with_capacity(chunk.len());
            let mut outs = Vec::with_capacity(chunk.len());
            for (f, s) in chunk.iter_mut() {
                let imp = match self.sad.outbound(s.id).map(|sa| &sa.cipher) {
                    Some(EspCipher::Cbc(c)) => &*c.imp,
                    _ => continue,
                };
                let Some(esp) = f.data_mut().get_mut(..s.framed.esp_len) else {
                    continue;
                };
                jobs.push(CbcJob::new(imp, esp, s.framed.esn_hi));
                outs.push(&mut s.result);
            }
            cbc::seal_burst(&mut jobs);
            for (j, out) in jobs.iter().zip(outs) {
                *out = j.result;
            }
        }
        for (mut f, s) in seals.drain(..) {
            let v = self.seal_done(&mut f, &s, now);
            self.dispatch(f, Side::Lan, v);
        }
        self.cbc_seals = seals;
    }

    /// The second half of a CBC packet's seal.
    fn seal_done(&mut self, f: &mut P::Frame, s: &SealLater, now: u64) -> Verdict {
        let Some(sa) = self.sad.outbound_mut(s.id) else {
            return Verdict::Drop(DropReason::NoSa);
        };
        let r = s
            .result
            .map_err(tunnel::cbc_reason)
            .and_then(|()| tunnel::finish_cbc(sa, f, &s.framed));
        match r {
            Ok(crossing) => self.sealed(f, s.id, crossing, s.framed.inner_len, s.outer_v6, now),
            Err(r) => {
                sa.counters.record_drop(r);
                Verdict::Drop(r)
            }
        }
    }

    /// Opens the burst's checked CBC packets in one batch, then finishes each in order.
    pub(super) fn open_cbc_burst(&mut self, now: u64) {
        let mut opens = core::mem::take(&mut self.cbc_opens);
        for chunk in opens.chunks_mut(BURST) {
            let mut jobs: Vec<CbcJob<'_>> = Vec::with_capacity(chunk.len());
            let mut outs = Vec::with_capacity(chunk.len());
            for (f, o) in chunk.iter_mut() {
                let Some(sa) = self.sad.inbound(o.pending.spi) else {
                    continue;
                };
                let EspCipher::Cbc(c) = &sa.cipher else {
                    continue;
                };
                jobs.push(CbcJob::new(&*c.imp, f.data_mut(), o.pending.esn_hi(sa)));
                outs.push(&mut o.result);
            }
            cbc::open_burst(&mut jobs);
            for (j, out) in jobs.iter().zip(outs) {
                *out = j.result;
            }
        }
        for (mut f, o) in opens.drain(..) {
            let v = match tunnel::finish_open_cbc(&mut self.sad, &mut f, o.pending, o.result, now) {
                Ok(opened) => self.after_open(&mut f, &opened, o.outer_ecn, now),
                Err(r) => {
                    // Back to the outer header, for the report (as a direct open's failure).
                    let _ = f.prepend(o.esp_at);
                    self.open_failed(&f, r, o.pending.spi, now)
                }
            };
            self.dispatch(f, Side::Wan, v);
        }
        self.cbc_opens = opens;
    }
}
