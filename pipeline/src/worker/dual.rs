//! The dual path of a client's direct SA on probation (connectivity manager, issue 20): until
//! the control plane has seen an authenticated packet on the direct path, each LAN packet to
//! the peer's virtual IP takes the way it takes without the binding (the SPD: sealed onto the
//! gateway SA) and a copy is sealed onto the direct SA; a direct path that NAT or a firewall
//! blocks then costs nothing. `Update::BindHost` for the same address (proven: direct only) or
//! `Update::UnbindHost` (gateway only) ends the probation.
//!
//! Owns the copy. Never drops the original for the copy's sake, and under pressure the copies
//! give way first: a copy is made only while the WAN transmit queue is shorter than
//! [`DUAL_TXQ_MAX`], half the level at which LAN receive pauses (`dual_path_queue_full`
//! otherwise), so a congested WAN carries the originals alone; from a buffer of its own
//! (`dual_path_no_buffer`); and only when it fits the WAN MTU once sealed
//! (`dual_path_mtu_exceeded`; the original answers with the ICMP error when it does not fit
//! either). Never puts a packet on the direct SA that its binding's source does not allow (the
//! same check as an ordinary binding). A copy is made only by the worker that owns the direct
//! SA (it is never handed off): a frame gets at most one, made where it arrives or where its
//! original is handed to; with several workers a frame that passes neither that way gets none
//! (it still takes the gateway path).
//!
//! The receiver gets both: its peer's application sees the packets of the probation twice (IP
//! may duplicate; the gateway path and the direct path use different SAs, so no replay window
//! can tell them apart). The probation lasts from `PeerReady` to the first liveness probe
//! that sees the peer's direct packets (about 100 ms), or to the 1 s fallback.

use core::net::IpAddr;

use super::parse::parse_ip;
use super::{Worker, TXQ_HIGH};
use crate::esp::tunnel;
use crate::port::{Frame, Port};
use crate::stats::{DropReason, Traffic};
use crate::wire::ethernet;

/// The WAN transmit queue's length from which copies are dropped (`dual_path_queue_full`).
pub(super) const DUAL_TXQ_MAX: usize = TXQ_HIGH / 2;

impl<P: Port> Worker<P> {
    /// A LAN frame (still as received) to a host on probation: its copy sealed onto the
    /// binding's SA and queued for the WAN. The caller then handles the frame as ever.
    pub(super) fn dual_copy(&mut self, f: &P::Frame, now: u64) {
        let Ok(pkt) = parse_ip(f.data()) else {
            return;
        };
        if pkt.hop_limit <= 1 {
            return;
        }
        let Some(&(src, id)) = self.dual.get(&pkt.key.dst) else {
            return;
        };
        let vip = if src.contains(pkt.key.src) {
            false
        } else {
            let v = self.vip_nat.as_ref().map(|n| IpAddr::V4(n.external_addr()));
            if !v.is_some_and(|v| !pkt.ipv6 && src.contains(v)) {
                return;
            }
            true
        };
        // Only where the direct SA lives: the copy is never handed off.
        let Some(sa) = self.sad.outbound(id) else {
            return;
        };
        let inner_len = f.len().saturating_sub(ethernet::HEADER_LEN);
        if inner_len + tunnel::overhead(sa, inner_len) > usize::from(self.wan_link.mtu) {
            self.counters.record_drop(DropReason::DualPathMtuExceeded);
            return;
        }
        if self.wan_txq.len() >= DUAL_TXQ_MAX {
            self.counters.record_drop(DropReason::DualPathQueueFull);
            return;
        }
        let Some(mut copy) = self.wan.alloc() else {
            self.counters.record_drop(DropReason::DualPathNoBuffer);
            return;
        };
        if !copy.append(f.len()) {
            self.counters.record_drop(DropReason::DualPathNoBuffer);
            return;
        }
        copy.data_mut().copy_from_slice(f.data());
        let verdict = self.protect(&mut copy, &pkt, id, now, vip);
        if !matches!(verdict, super::Verdict::Drop(_)) {
            self.counters.count(Traffic::DualPathCopies, 1);
        }
        self.dispatch(copy, super::Side::Lan, verdict);
    }
}
