//! ICMP errors the worker originates about packets it cannot deliver: "time exceeded" when a
//! hop limit runs out here (RFC 1812 5.3.1, RFC 4443 3.3: what traceroute reads), "host /
//! address unreachable" when the next hop never answered ARP or neighbour discovery (RFC 1812
//! 4.3.3.1, RFC 4443 3.1), and "fragmentation needed / packet too big" (`outbound`).
//!
//! The error goes to the invoking packet's source the way any packet of ours to it would: to
//! the LAN directly when the packet came from the LAN; when it came from the WAN (decrypted,
//! or bypassed), through the LAN side's outbound path (`Worker::outbound`) from our LAN
//! address, so that an error about a decrypted packet is sealed back into its tunnel as an
//! answer from the protected network would be (the SPD decides; an error no policy covers is
//! dropped like any such packet). RFC 1812 4.3.2.7 / RFC 4443 2.4 (e) rules apply (no error
//! about an error, a non-first fragment, a multicast or unspecified source), and none goes to
//! one of our own addresses (the ESP packets we send ourselves). At most
//! [`ICMP_ERRORS_PER_SEC`] per worker (RFC 1812 4.3.2.8, RFC 4443 2.4 (f)); the rest are
//! counted (`icmp_rate_limited`) and not sent.
//!
//! Owns: the choice of source address, way and budget. Must never: send an error about an
//! ICMP error, or more than the budget.

use core::net::IpAddr;

use super::emit::push_eth_to;
use super::{Side, Worker};
use crate::port::{Frame, Port};
use crate::stats::{DropReason, Traffic};
use crate::wire::{ethernet, icmpv4, icmpv6, ipv4, ipv6};

/// ICMP errors one worker sends per second at most.
pub const ICMP_ERRORS_PER_SEC: u32 = 500;

/// Which error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum IcmpError {
    /// The hop limit ran out here.
    TimeExceeded,
    /// The next hop on the way out never answered ARP / neighbour discovery.
    Unreachable,
}

/// The per-worker budget: a fixed one-second window.
#[derive(Default)]
pub(super) struct IcmpBudget {
    window_start: u64,
    used: u32,
}

impl IcmpBudget {
    /// Takes one error from the budget of the second `now` (ns) falls in.
    pub(super) fn take(&mut self, now: u64) -> bool {
        if now.saturating_sub(self.window_start) >= 1_000_000_000 || now < self.window_start {
            self.window_start = now;
            self.used = 0;
        }
        if self.used >= ICMP_ERRORS_PER_SEC {
            return false;
        }
        self.used += 1;
        true
    }
}

impl<P: Port> Worker<P> {
    /// Whether one more ICMP error may leave now; counts the refusal.
    pub(super) fn icmp_allowed(&mut self) -> bool {
        let now = self.now;
        if self.icmp_budget.take(now) {
            return true;
        }
        self.counters.count(Traffic::IcmpRateLimited, 1);
        false
    }

    /// Sends `kind` about the IP packet `invoking` (no Ethernet header) to its source; the
    /// packet came from `from`. Nothing is sent when the rules or the budget say no.
    pub(super) fn send_icmp_error(
        &mut self,
        kind: IcmpError,
        invoking: &[u8],
        ipv6: bool,
        from: Side,
    ) {
        let Some((src, dst)) = invoking_addrs(invoking, ipv6) else {
            return;
        };
        // Not about what we send ourselves (our ESP), nor what is addressed to us.
        let lan = [
            self.lan_link.addr4.map(IpAddr::V4),
            self.lan_link.addr6.map(IpAddr::V6),
        ];
        let ours = |a: IpAddr| lan.contains(&Some(a)) || self.is_wan_address(a);
        if ours(src) || ours(dst) {
            return;
        }
        let allowed = if ipv6 {
            let msg = match kind {
                IcmpError::TimeExceeded => icmpv6::Message::TimeExceeded,
                IcmpError::Unreachable => icmpv6::Message::DstUnreachable,
            };
            icmpv6::may_send_error(invoking, msg)
        } else {
            icmpv4::may_send_error(invoking)
        };
        if !allowed || !self.icmp_allowed() {
            return;
        }
        // From our LAN address: on the LAN it is the link's, through a tunnel it is inside the
        // protected network the SA's selectors cover.
        let (a4, a6) = (self.lan_link.addr4, self.lan_link.addr6);
        let Some(mut out) = self.lan.alloc() else {
            return;
        };
        let cap = if ipv6 { ipv6::MIN_MTU } else { ipv4::MIN_MTU };
        if !out.append(cap) {
            return;
        }
        let built = match (ipv6, kind, a4, a6) {
            (false, IcmpError::TimeExceeded, Some(s), _) => {
                icmpv4::build_time_exceeded(out.data_mut(), s, invoking)
            }
            (false, IcmpError::Unreachable, Some(s), _) => {
                icmpv4::build_host_unreachable(out.data_mut(), s, invoking)
            }
            (true, IcmpError::TimeExceeded, _, Some(s)) => {
                icmpv6::build_time_exceeded(out.data_mut(), s, invoking)
            }
            (true, IcmpError::Unreachable, _, Some(s)) => {
                icmpv6::build_address_unreachable(out.data_mut(), s, invoking)
            }
            _ => None,
        };
        let Some(n) = built else {
            return;
        };
        out.truncate(n);
        self.emit_icmp(out, ipv6, from);
    }

    /// An error built in `out` (its IP packet) on its way to a sender on `from`'s side,
    /// counted `icmp_sent`: from here it is a frame of its own, forwarded, queued for its next
    /// hop or dropped and counted like any other. To the LAN directly; toward the WAN as a
    /// frame from the LAN, into the outbound path at the burst's end (`flush_icmp_errors`:
    /// here a sealed packet may still wait for its frame).
    pub(super) fn emit_icmp(&mut self, mut out: P::Frame, ipv6: bool, from: Side) {
        self.counters.count(Traffic::IcmpSent, 1);
        match from {
            Side::Lan => {
                self.send_originated(Side::Lan, out, ipv6);
            }
            Side::Wan => {
                let mac = self.lan_link.mac;
                if push_eth_to(&mut out, mac, mac, ipv6) {
                    self.icmp_pending.push(out);
                } else {
                    self.counters.record_drop(DropReason::NoBufferRoom);
                }
            }
        }
    }

    /// The errors about what came from the WAN, through the outbound path (sealed with the
    /// burst's other packets). Called by `finish_burst` before its seals, when every parked
    /// seal has its frame.
    pub(super) fn flush_icmp_errors(&mut self, now: u64) {
        let mut pending = core::mem::take(&mut self.icmp_pending);
        for mut f in pending.drain(..) {
            let v = self.outbound(&mut f, now);
            self.dispatch(f, Side::Lan, v);
        }
        self.icmp_pending = pending;
    }
}

/// The source and destination of an IP packet of the family `ipv6` says.
fn invoking_addrs(ip: &[u8], ipv6: bool) -> Option<(IpAddr, IpAddr)> {
    if ipv6 {
        let p = ipv6::Packet::new_checked(ip).ok()?;
        Some((p.src_addr().into(), p.dst_addr().into()))
    } else {
        let p = ipv4::Packet::new_checked(ip).ok()?;
        Some((p.src_addr().into(), p.dst_addr().into()))
    }
}

/// The IP packet behind a frame's Ethernet header.
pub(super) fn ip_of<F: Frame>(f: &F) -> &[u8] {
    f.data().get(ethernet::HEADER_LEN..).unwrap_or(&[])
}
