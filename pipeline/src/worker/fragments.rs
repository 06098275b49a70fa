//! Outer fragments of ESP and IKE sent to one of our WAN addresses: kept by the worker's
//! [`Reassembler`] until their datagram is whole, which then goes the ordinary inbound way
//! (ESP opened, IKE punted) as if it had come in one piece.
//!
//! Owns the hand-off between a fragment's frame and the reassembler, and what becomes of a
//! reassembled datagram that no frame buffer can hold (IKE is punted straight from the
//! reassembler's buffer; ESP is dropped, named). Never reassembles transit traffic, never takes
//! a reassembled datagram for clear traffic, never drops a fragment without a named reason.

use super::parse::parse_l3;
use super::{Verdict, Worker};
use crate::port::{Frame, Port};
use crate::reasm::{Outcome, ReasmDrop, Reassembler};
use crate::stats::{DropReason, L3Stat};
use crate::wire::{ethernet, natt, udp, IpProtocol};

impl<P: Port> Worker<P> {
    /// A fragment for us: held, or its datagram completed and processed. Without a reassembler
    /// (`dataplane.reassembly` off), `outer_fragment`.
    pub(super) fn reassemble(&mut self, f: &mut P::Frame, now: u64) -> Verdict {
        // Out of `self` for the call: a completed datagram borrows the reassembler while the
        // rest of the worker processes it.
        let Some(mut r) = self.reasm.take() else {
            return Verdict::Drop(DropReason::OuterFragment);
        };
        let ip = f.data().get(ethernet::HEADER_LEN..).unwrap_or(&[]);
        let v = match r.push(ip, now) {
            // The worker's parser saw a fragment; the reassembler's own parser disagreeing is
            // a header it refuses.
            Outcome::NotFragment => Verdict::Drop(DropReason::ReasmMalformed),
            Outcome::Held => Verdict::Drop(DropReason::ReasmHeld),
            Outcome::Dropped(d) => Verdict::Drop(reasm_reason(d)),
            Outcome::Complete(dg) => self.reassembled(f, dg, now),
        };
        self.reasm = Some(r);
        v
    }

    /// A whole datagram: into the last fragment's frame and on through the inbound path, or,
    /// larger than the frame can hold, IKE punted from where it is.
    fn reassembled(&mut self, f: &mut P::Frame, dg: &[u8], now: u64) -> Verdict {
        let need = ethernet::HEADER_LEN + dg.len();
        let len = f.len();
        let fits = need <= len || f.append(need - len);
        if fits {
            f.truncate(need);
            if let Some(ip) = f.data_mut().get_mut(ethernet::HEADER_LEN..need) {
                ip.copy_from_slice(dg);
            }
            return match super::parse::parse_ip(f.data()) {
                Ok(pkt) if !pkt.fragment => self.inbound_whole(f, pkt, now, true),
                _ => Verdict::Drop(DropReason::ReasmMalformed),
            };
        }
        let Ok(pkt) = parse_l3(dg) else {
            return Verdict::Drop(DropReason::ReasmMalformed);
        };
        if IpProtocol::from(pkt.key.proto) != IpProtocol::Udp {
            return Verdict::Drop(DropReason::ReasmNoRoom);
        }
        let Some(u) = dg
            .get(pkt.header_len..)
            .and_then(|s| udp::Packet::new_checked(s).ok())
        else {
            return Verdict::Drop(DropReason::ReasmMalformed);
        };
        let payload = u.payload();
        match pkt.key.dst_port {
            natt::IKE_PORT => Verdict::Drop(self.punt(&pkt, payload)),
            natt::NATT_PORT if natt::classify(payload) == natt::Kind::Ike => Verdict::Drop(
                self.punt(&pkt, payload.get(natt::NON_ESP_MARKER_LEN..).unwrap_or(&[])),
            ),
            natt::NATT_PORT => Verdict::Drop(DropReason::ReasmNoRoom),
            _ => Verdict::Drop(DropReason::ReasmNotIpsec),
        }
    }

    /// Runs the reassembler's timers and publishes what it holds.
    pub(super) fn reasm_housekeeping(&mut self, now: u64) {
        let Some(r) = self.reasm.as_mut() else {
            return;
        };
        let expired = r.next_deadline().is_some_and(|d| d <= now) && r.expire(now, 64) > 0;
        // Published when something happened: fragments arrived or datagrams timed out.
        let seen = r.counters().fragments;
        if expired || seen != self.reasm_published {
            self.reasm_published = seen;
            publish(&self.counters, r);
        }
    }
}

/// The reassembler's gauges and datagram fates as L3 counters.
fn publish(c: &crate::stats::CoreCounters, r: &Reassembler) {
    let k = r.counters();
    let dg = |d: ReasmDrop| k.datagram_drop(d);
    let discarded = [
        ReasmDrop::Overlap,
        ReasmDrop::TooLarge,
        ReasmDrop::InconsistentEnd,
        ReasmDrop::TooManyFragments,
        ReasmDrop::EcnMismatch,
    ]
    .iter()
    .map(|d| dg(*d))
    .sum::<u64>();
    let lost = ReasmDrop::ALL
        .iter()
        .map(|d| k.fragment_drop(*d))
        .sum::<u64>();
    c.set_l3(L3Stat::ReasmFragments, k.fragments);
    c.set_l3(L3Stat::ReasmReassembled, k.reassembled);
    c.set_l3(L3Stat::ReasmMemoryBytes, r.memory_bytes() as u64);
    c.set_l3(L3Stat::ReasmInFlight, r.datagrams_in_flight() as u64);
    c.set_l3(L3Stat::ReasmHeldFragments, r.held_fragments() as u64);
    c.set_l3(L3Stat::ReasmDatagramsTimeout, dg(ReasmDrop::Timeout));
    c.set_l3(
        L3Stat::ReasmDatagramsSourceLimit,
        dg(ReasmDrop::SourceLimit),
    );
    c.set_l3(L3Stat::ReasmDatagramsEvicted, dg(ReasmDrop::Evicted));
    c.set_l3(L3Stat::ReasmDatagramsDiscarded, discarded);
    c.set_l3(L3Stat::ReasmFragmentsDropped, lost);
}

/// The drop reason of a fragment the reassembler refused.
fn reasm_reason(d: ReasmDrop) -> DropReason {
    match d {
        ReasmDrop::Malformed => DropReason::ReasmMalformed,
        ReasmDrop::BadLength => DropReason::ReasmBadLength,
        ReasmDrop::TooLarge => DropReason::ReasmTooLarge,
        ReasmDrop::HeadersTooLong => DropReason::ReasmHeadersTooLong,
        ReasmDrop::TinyFirstFragment => DropReason::ReasmTinyFirstFragment,
        ReasmDrop::Overlap => DropReason::ReasmOverlap,
        ReasmDrop::Duplicate => DropReason::ReasmDuplicate,
        ReasmDrop::InconsistentEnd => DropReason::ReasmInconsistentEnd,
        ReasmDrop::TooManyFragments => DropReason::ReasmTooManyFragments,
        ReasmDrop::EcnMismatch => DropReason::ReasmEcnMismatch,
        ReasmDrop::Discarded => DropReason::ReasmDiscarded,
        // Timeouts and the per-source limit are datagram fates (`L3Stat`), never what a
        // pushed fragment comes back with.
        ReasmDrop::Timeout | ReasmDrop::SourceLimit | ReasmDrop::Evicted => {
            DropReason::ReasmEvicted
        }
    }
}
