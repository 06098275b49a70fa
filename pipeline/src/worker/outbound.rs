//! The clear side: LAN -> host binding or SPD -> ESP seal (or bypass, masqueraded) -> WAN.
//!
//! Owns the outbound verdict of a LAN frame, the MTU check with its ICMP error back to the
//! sender, and the hand-off to `esp::tunnel::encapsulate`. Never seals a packet that does not
//! fit the WAN MTU, never forwards with a hop limit of 1.

use core::net::IpAddr;

use super::cbc_burst::SealLater;
use super::emit::decrement_hop_limit;
use super::gcm_burst;
use super::icmp_error::{ip_of, IcmpError};
use super::parse::{parse_ip, IpInfo};
use super::{nat_reason, Side, Verdict, Worker};
use crate::esp::sa::OutboundSa;
use crate::esp::tunnel::{self, InnerMeta, NH_IPV4, NH_IPV6};
use crate::ids::SaId;
use crate::port::{Frame, Port};
use crate::spd::{Action, FlowKey};
use crate::stats::{DropReason, Traffic};
use crate::wire::{ethernet, icmpv4, icmpv6, ipv4, ipv6};

impl<P: Port> Worker<P> {
    #[inline]
    pub(super) fn rx_lan(&mut self, now: u64) -> usize {
        self.rx_burst(Side::Lan, now)
    }

    #[inline]
    pub(super) fn outbound(&mut self, f: &mut P::Frame, now: u64) -> Verdict {
        // Used where it was parsed (moved out of the `Result`, it was copied with wide loads
        // of what the parse had just stored narrowly: a store-forwarding stall).
        let parsed = parse_ip(f.data());
        let pkt = match &parsed {
            Ok(p) => p,
            Err(r) => return Verdict::Drop(*r),
        };
        if pkt.hop_limit <= 1 {
            self.send_icmp_error(IcmpError::TimeExceeded, ip_of(f), pkt.ipv6, Side::Lan);
            return Verdict::Drop(DropReason::TtlExceeded);
        }
        // A road warrior's virtual IP: one exact-match lookup before the SPD. On a client, a
        // binding whose source is its own virtual IP (a direct SA to another client, from the
        // connectivity manager) takes the LAN's flows masqueraded to that address.
        if !self.hosts.is_empty() {
            if let Some(&(src, id)) = self.hosts.get(&pkt.key.dst) {
                if src.contains(pkt.key.src) {
                    return self.protect(f, pkt, id, now, false);
                }
                let vip = self.vip_nat.as_ref().map(|n| IpAddr::V4(n.external_addr()));
                if vip.is_some_and(|v| !pkt.ipv6 && src.contains(v)) {
                    return self.protect(f, pkt, id, now, true);
                }
            }
        }
        // A client: LAN flows go into the tunnel as the virtual IP the gateway assigned.
        if let Some(vip) = self.vip_nat.as_ref().map(|n| IpAddr::V4(n.external_addr())) {
            if !pkt.ipv6 && pkt.key.src != vip {
                let key = FlowKey {
                    src: vip,
                    ..pkt.key
                };
                if let Some(Action::Protect(id)) = self.spd.lookup(&key).map(|r| r.action) {
                    return self.protect(f, pkt, id, now, true);
                }
            }
        }
        let Some(rule) = self.spd.lookup(&pkt.key) else {
            return Verdict::Drop(DropReason::NoPolicy);
        };
        self.counters.count_rule(rule.id);
        match rule.action {
            Action::Discard => Verdict::Drop(DropReason::PolicyDiscard),
            Action::Bypass => {
                if !decrement_hop_limit(f, pkt.ipv6) || !f.adj(ethernet::HEADER_LEN) {
                    return Verdict::Drop(DropReason::MalformedIp);
                }
                if !pkt.ipv6 {
                    if let Some(nat) = self.nat.as_mut() {
                        if let Err(e) = nat.outbound(f.data_mut(), now) {
                            return Verdict::Drop(nat_reason(e));
                        }
                        self.counters.count(Traffic::Masqueraded, 1);
                    }
                }
                self.counters.count(Traffic::Bypassed, 1);
                self.forward(f, Side::Wan, pkt.ipv6)
            }
            Action::Protect(id) => self.protect(f, pkt, id, now, false),
        }
    }

    /// Seals one LAN packet into ESP on outbound SA `id`; `vip` masquerades it to the
    /// client's virtual IP first.
    #[inline]
    pub(super) fn protect(
        &mut self,
        f: &mut P::Frame,
        pkt: &IpInfo,
        id: SaId,
        now: u64,
        vip: bool,
    ) -> Verdict {
        let Some(sa) = self.sad.outbound_mut(id) else {
            // A group this worker holds (`group`).
            if !self.groups.is_empty() {
                if let Some(v) = self.protect_group(f, pkt, id, now) {
                    return v;
                }
            }
            // Another worker owns the SA: the frame goes there, untouched.
            return self
                .outbound_elsewhere(id)
                .unwrap_or(Verdict::Drop(DropReason::NoSa));
        };
        let inner_len = f.len() - ethernet::HEADER_LEN;
        let outer_len = inner_len + tunnel::overhead(sa, inner_len);
        if outer_len > usize::from(self.wan_link.mtu) {
            let inner_mtu = usize::from(self.wan_link.mtu).saturating_sub(outer_len - inner_len);
            let reason = DropReason::MtuExceeded;
            sa.counters.record_drop(reason);
            self.send_too_big(f, pkt.ipv6, inner_mtu);
            return Verdict::Drop(reason);
        }
        if !decrement_hop_limit(f, pkt.ipv6) || !f.adj(ethernet::HEADER_LEN) {
            return Verdict::Drop(DropReason::MalformedIp);
        }
        // Before the masquerade, whose incremental updates keep a checksum right only if it
        // was right.
        self.clear_checksum.apply(f.data_mut(), pkt, &self.counters);
        // Rewritten after the MTU check, so that an ICMP error quotes what the host sent.
        if let Some(nat) = self.vip_nat.as_mut().filter(|_| vip) {
            if let Err(e) = nat.outbound(f.data_mut(), now) {
                let r = nat_reason(e);
                sa.counters.record_drop(r);
                return Verdict::Drop(r);
            }
            self.counters.count(Traffic::Masqueraded, 1);
        }
        let meta = InnerMeta {
            next_header: if pkt.ipv6 { NH_IPV6 } else { NH_IPV4 },
            dscp: pkt.dscp,
            ecn: pkt.ecn,
        };
        let outer_v6 = sa.ipv6;
        if tunnel::is_cbc(sa) {
            // Framed now, sealed with the burst's other CBC packets, finished in
            // `seal_cbc_burst`.
            return match tunnel::frame_cbc(sa, f, meta) {
                Ok(framed) => Verdict::SealLater(SealLater {
                    id,
                    framed,
                    outer_v6,
                    result: Err(crate::crypto::CbcError::Backend),
                }),
                Err(r) => {
                    sa.counters.record_drop(r);
                    Verdict::Drop(r)
                }
            };
        }
        // Framed and on its way now, sealed at the burst's end (`gcm_burst`); the SA in hand
        // for the whole first half (one lookup per packet). The common way: no hold and the
        // WAN's next hop known now (configured, or the resolver's memo of this SA's peer):
        // framed with every header, Ethernet included, and parked to go to the WAN (the
        // bookkeeping of `sealed_with`, without a way to decide).
        let wan_mac = match &self.resolvers[Side::Wan as usize] {
            None => Some(self.wan_link.neighbor),
            Some(r) => r.memo_to(sa.remote, self.now),
        };
        let macs = wan_mac
            .filter(|_| !sa.holding)
            .map(|dst| (self.wan_link.mac, dst));
        let crossing = match gcm_burst::frame_into(&mut self.gcm_seals, sa, id, f, meta, macs) {
            Ok(c) => c,
            Err(r) => return Verdict::Drop(r),
        };
        let after = SaAfterSeal::of(sa, now);
        if macs.is_none() {
            let v = self.sealed_with(f, id, crossing, after, inner_len, outer_v6, now);
            return self.park_gcm(v);
        }
        self.count_sealed(id, crossing, after.seq_due, inner_len, now);
        Verdict::SealGcm
    }

    /// The counts of a packet sealed on outbound SA `id`, and its reports if due.
    #[inline]
    fn count_sealed(
        &mut self,
        id: SaId,
        crossing: Option<crate::stats::Crossing>,
        seq_due: bool,
        inner_len: usize,
        now: u64,
    ) {
        self.counters.count(Traffic::Encrypted, 1);
        self.counters
            .count(Traffic::EncryptedBytes, inner_len as u64);
        if crossing.is_some() || seq_due {
            self.report_outbound(id, crossing, now);
        }
    }

    /// The bookkeeping of a packet sealed on outbound SA `id`, and its way to the WAN.
    #[inline]
    pub(super) fn sealed(
        &mut self,
        f: &mut P::Frame,
        id: SaId,
        crossing: Option<crate::stats::Crossing>,
        inner_len: usize,
        outer_v6: bool,
        now: u64,
    ) -> Verdict {
        let Some(sa) = self.sad.outbound_mut(id) else {
            return Verdict::Drop(DropReason::NoSa);
        };
        let after = SaAfterSeal::of(sa, now);
        self.sealed_with(f, id, crossing, after, inner_len, outer_v6, now)
    }

    /// [`Self::sealed`] with what it reads of the SA already read ([`SaAfterSeal::of`]).
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn sealed_with(
        &mut self,
        f: &mut P::Frame,
        id: SaId,
        crossing: Option<crate::stats::Crossing>,
        after: SaAfterSeal,
        inner_len: usize,
        outer_v6: bool,
        now: u64,
    ) -> Verdict {
        let SaAfterSeal { seq_due, holding } = after;
        self.count_sealed(id, crossing, seq_due, inner_len, now);
        let v = self.forward(f, Side::Wan, outer_v6);
        if holding {
            if let Some(until) = self.hold_until(id, now) {
                return match v {
                    Verdict::ToWan => Verdict::Hold { until, hop: None },
                    Verdict::Resolve(Side::Wan, hop) => Verdict::Hold {
                        until,
                        hop: Some(hop),
                    },
                    other => other,
                };
            }
        }
        v
    }

    /// ICMP "fragmentation needed" / ICMPv6 "packet too big" back to the sender on the LAN.
    pub(super) fn send_too_big(&mut self, f: &P::Frame, ipv6: bool, mtu: usize) {
        if !self.icmp_allowed() {
            return;
        }
        let Some(mut out) = self.lan.alloc() else {
            return;
        };
        // RFC 792/4443: the error, quote included, fits in the minimum MTU of the family.
        let cap = if ipv6 { ipv6::MIN_MTU } else { ipv4::MIN_MTU };
        if !out.append(cap) {
            return;
        }
        let invoking = f.data().get(ethernet::HEADER_LEN..).unwrap_or(&[]);
        let built = match (ipv6, self.lan_link.addr4, self.lan_link.addr6) {
            (true, _, Some(src)) => {
                icmpv6::build_packet_too_big(out.data_mut(), src, invoking, mtu as u32)
            }
            (false, Some(src), _) => {
                icmpv4::build_frag_needed(out.data_mut(), src, invoking, mtu as u16)
            }
            _ => None,
        };
        let Some(n) = built else {
            return;
        };
        out.truncate(n);
        self.emit_icmp(out, ipv6, Side::Lan);
    }
}

/// What the bookkeeping of a sealed packet needs of its SA, read while the SA is in hand (its
/// last use is set then too).
#[derive(Clone, Copy)]
struct SaAfterSeal {
    /// A sequence-number report is due (a checkpoint, or the warning before the limit).
    seq_due: bool,
    /// The SA was installed with a hold that has not ended (`hold`).
    holding: bool,
}

impl SaAfterSeal {
    #[inline]
    fn of(sa: &OutboundSa, now: u64) -> Self {
        sa.counters.last_used.set(now.max(1));
        SaAfterSeal {
            seq_due: sa.seq >= sa.next_report,
            holding: sa.holding,
        }
    }
}
