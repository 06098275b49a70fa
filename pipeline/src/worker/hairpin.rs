//! Hairpin forwarding: a packet opened from one road warrior's SA whose destination is another
//! road warrior's virtual IP (a host binding) is sealed again onto that client's SA and sent
//! back out of the WAN port, instead of going to the LAN (where only a router that sends it
//! back would get it to the other client).
//!
//! Owns the decision and the second seal. Never puts a packet on an SA whose binding does not
//! allow its source (the same check as LAN traffic toward the host), never seals what does not
//! fit the WAN MTU, never lets the WAN transmit queue grow without bound: WAN receive is not
//! paused on the WAN's own queue (two gateways whose WAN links are both full would wait on each
//! other), so a hairpinned packet beyond `HAIRPIN_TXQ_MAX` is dropped and counted. The hop
//! limit was decremented once when the packet was opened: it passes through this gateway once.
//! A binding whose SA sits on another worker is left to the LAN path, as before.
//!
//! Each hairpinned packet is also counted by (source, destination) in a bounded table
//! ([`HairpinPairs`]); once a second the pairs seen in that second go to the control plane
//! (`Event::Hairpin`, packets and bytes of the second) and the table starts again: at most
//! `MAX_PAIRS` reports per worker and second, whatever the traffic. A pair that finds the
//! table full is counted (`Traffic::HairpinUntracked`) and reported in a later second.

use core::net::IpAddr;

use super::gcm_burst;
use super::parse::IpInfo;
use super::{Side, Verdict, Worker, TXQ_HIGH};
use crate::esp::tunnel::{self, InnerMeta, NH_IPV4, NH_IPV6};
use crate::ids::SaId;
use crate::msg::{Event, Reply};
use crate::port::{Frame, Port};
use crate::stats::{DropReason, Traffic};

/// The WAN transmit queue's length above which hairpinned packets are dropped
/// (`hairpin_queue_full`).
pub(super) const HAIRPIN_TXQ_MAX: usize = 2 * TXQ_HIGH;

/// Pairs counted per worker and report period.
pub(super) const MAX_PAIRS: usize = 64;

/// How often the pairs seen are reported (ns of the poll clock).
pub(super) const PAIR_REPORT_NS: u64 = 1_000_000_000;

/// Hairpinned packets and bytes by (source, destination) since the last report.
#[derive(Default)]
pub(super) struct HairpinPairs {
    counts: std::collections::HashMap<(IpAddr, IpAddr), (u64, u64), foldhash::fast::RandomState>,
    /// When the period being counted began (0: nothing counted yet).
    since: u64,
}

impl HairpinPairs {
    /// Counts one packet; false when the table is full and the pair not in it.
    #[inline]
    fn count(&mut self, src: IpAddr, dst: IpAddr, bytes: u64, now: u64) -> bool {
        if self.since == 0 {
            self.since = now.max(1);
        }
        if let Some(c) = self.counts.get_mut(&(src, dst)) {
            c.0 += 1;
            c.1 += bytes;
            return true;
        }
        if self.counts.len() >= MAX_PAIRS {
            return false;
        }
        self.counts.insert((src, dst), (1, bytes));
        true
    }
}

impl<P: Port> Worker<P> {
    /// The host binding `inner` goes to, if it is a hairpin: another road warrior's virtual IP
    /// whose binding allows this source, with its outbound SA on this worker.
    #[inline]
    pub(super) fn hairpin_target(&self, inner: &IpInfo) -> Option<SaId> {
        if self.hosts.is_empty() {
            return None;
        }
        let &(src, id) = self.hosts.get(&inner.key.dst)?;
        (src.contains(inner.key.src) && self.sad.outbound(id).is_some()).then_some(id)
    }

    /// Seals the opened inner packet in `f` (its data starts at the inner IP header, hop limit
    /// and ECN already rewritten) onto outbound SA `id` and sends it to the WAN.
    #[inline]
    pub(super) fn hairpin(
        &mut self,
        f: &mut P::Frame,
        inner: &IpInfo,
        ecn: u8,
        id: SaId,
        now: u64,
    ) -> Verdict {
        if self.wan_txq.len() >= HAIRPIN_TXQ_MAX {
            return Verdict::Drop(DropReason::HairpinQueueFull);
        }
        let Some(sa) = self.sad.outbound_mut(id) else {
            return Verdict::Drop(DropReason::NoSa);
        };
        let inner_len = f.len();
        if inner_len + tunnel::overhead(sa, inner_len) > usize::from(self.wan_link.mtu) {
            let r = DropReason::HairpinMtuExceeded;
            sa.counters.record_drop(r);
            return Verdict::Drop(r);
        }
        let meta = InnerMeta {
            next_header: if inner.ipv6 { NH_IPV6 } else { NH_IPV4 },
            dscp: inner.dscp,
            ecn,
        };
        let outer_v6 = sa.ipv6;
        // A GCM packet is parked for its seal as the LAN's are (`gcm_burst`): the packets of
        // one SA then leave in the order of their numbers whichever way they came.
        let parked = !tunnel::is_cbc(sa);
        let crossing = if parked {
            match gcm_burst::frame_into(&mut self.gcm_seals, sa, id, f, meta, None) {
                Ok(c) => c,
                Err(r) => return Verdict::Drop(r),
            }
        } else {
            match tunnel::encapsulate(sa, f, meta) {
                Ok(c) => c,
                Err(r) => {
                    sa.counters.record_drop(r);
                    return Verdict::Drop(r);
                }
            }
        };
        sa.counters.last_used.set(now.max(1));
        let seq_due = sa.seq >= sa.next_report;
        self.counters.count(Traffic::Encrypted, 1);
        self.counters
            .count(Traffic::EncryptedBytes, inner_len as u64);
        self.counters.count(Traffic::Hairpinned, 1);
        self.counters
            .count(Traffic::HairpinnedBytes, inner_len as u64);
        let (src, dst) = (inner.key.src, inner.key.dst);
        if !self.hairpins.count(src, dst, inner_len as u64, now) {
            self.counters.count(Traffic::HairpinUntracked, 1);
        }
        if crossing.is_some() || seq_due {
            self.report_outbound(id, crossing, now);
        }
        let v = self.forward(f, Side::Wan, outer_v6);
        if parked {
            self.park_gcm(v)
        } else {
            v
        }
    }
}

impl<P: Port> Worker<P> {
    /// Once a period: one `Event::Hairpin` per pair counted in it, then a new period.
    pub(super) fn report_hairpins(&mut self, now: u64) {
        let since = self.hairpins.since;
        if since == 0 || now.saturating_sub(since) < PAIR_REPORT_NS {
            return;
        }
        let millis = u32::try_from(now.saturating_sub(since) / 1_000_000).unwrap_or(u32::MAX);
        let worker = self.id;
        let counts = core::mem::take(&mut self.hairpins.counts);
        self.hairpins.since = 0;
        for ((src, dst), (packets, bytes)) in counts {
            self.reply(Reply::Event(Event::Hairpin {
                worker,
                src,
                dst,
                packets,
                bytes,
                millis,
            }));
        }
    }
}
