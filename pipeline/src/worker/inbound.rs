//! The protected side: WAN -> ESP open -> selector, ECN and hop-limit checks -> LAN (or, for
//! another road warrior's virtual IP, sealed again: `hairpin`); IKE and
//! NAT-T keepalives sorted out of UDP; clear traffic by the mirrored SPD or the masquerade.
//!
//! Owns the inbound verdict of a WAN frame. Never delivers an inner packet its SA was not
//! negotiated to carry (RFC 4301 5.2), never moves an SA on a packet (M1: lookup by SPI
//! alone), never accepts clear traffic a protect policy covers.

use core::net::{IpAddr, Ipv4Addr};

use super::cbc_burst::OpenLater;
use super::emit::{decrement_hop_limit, rewrite_inner};
use super::group::Groups;
use super::icmp_error::{ip_of, IcmpError};
use super::parse::{outer_addrs, outer_udp_src_port, parse_inner, parse_ip, IpInfo};
use super::{nat_reason, Side, Verdict, Worker};
use crate::esp::sa::Encap;
use crate::esp::tunnel::{self, Decap, Opened};
use crate::ids::Spi;
use crate::port::{Frame, Port};
use crate::sad::Sad;
use crate::spd::{Action, FlowKey};
use crate::stats::{DropReason, Traffic};
use crate::wire::{esp, ethernet, natt, udp, IpProtocol};

impl<P: Port> Worker<P> {
    #[inline]
    pub(super) fn rx_wan(&mut self, now: u64) -> usize {
        self.rx_burst(Side::Wan, now)
    }

    #[inline]
    pub(super) fn inbound(&mut self, f: &mut P::Frame, now: u64) -> Verdict {
        let pkt = match parse_ip(f.data()) {
            Ok(p) => p,
            Err(r) => return Verdict::Drop(r),
        };
        if pkt.fragment && self.fragment_for_us(&pkt) {
            if let Some(v) = self.fragment_elsewhere(&pkt) {
                return v;
            }
            return self.reassemble(f, now);
        }
        self.inbound_whole(f, pkt, now, false)
    }

    /// A fragment of ESP or of UDP (where IKE and ESP-in-UDP travel) sent to one of our WAN
    /// addresses: reassembled, never taken for clear traffic. Other fragments (transit traffic)
    /// go the way of clear traffic.
    #[inline]
    fn fragment_for_us(&self, pkt: &IpInfo) -> bool {
        matches!(
            IpProtocol::from(pkt.key.proto),
            IpProtocol::Esp | IpProtocol::Udp
        ) && self.is_wan_address(pkt.key.dst)
    }

    pub(super) fn is_wan_address(&self, a: IpAddr) -> bool {
        let own = match a {
            IpAddr::V4(v) => self.wan_link.addr4 == Some(v),
            IpAddr::V6(v) => self.wan_link.addr6 == Some(v),
        };
        own || self.wan_also.contains(&a) || self.groups.listens_on(a)
    }

    /// An unfragmented packet (or a reassembled one, `reassembled`) from the WAN.
    #[inline]
    pub(super) fn inbound_whole(
        &mut self,
        f: &mut P::Frame,
        pkt: IpInfo,
        now: u64,
        reassembled: bool,
    ) -> Verdict {
        let esp_at = match IpProtocol::from(pkt.key.proto) {
            IpProtocol::Esp => Some((ethernet::HEADER_LEN + pkt.header_len, Encap::Bare)),
            IpProtocol::Udp => match self.classify_udp(f, &pkt) {
                Ok(Some(at)) => Some((at, Encap::Udp)),
                Ok(None) => None,
                // IKE on a worker without the punt ring: worker 0 has it.
                Err(DropReason::IkeNoControl) => {
                    return self
                        .ike_elsewhere(reassembled)
                        .unwrap_or(Verdict::Drop(DropReason::IkeNoControl))
                }
                Err(r) => return Verdict::Drop(r),
            },
            _ => None,
        };
        if let Some((at, encap)) = esp_at {
            if pkt.fragment {
                return Verdict::Drop(DropReason::OuterFragment);
            }
            // ESP for an SA another worker owns goes there, untouched.
            if let Some(v) = f.data().get(at..at + 4).and_then(|b| {
                let spi = Spi(u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                self.inbound_elsewhere(spi, reassembled)
            }) {
                return v;
            }
            // Group ESP (RFC 9838: an SPI of the group range, bare ESP) on its generation.
            if !self.groups.is_empty() && encap == Encap::Bare {
                if let Some(spi) = f
                    .data()
                    .get(at..at + 4)
                    .map(|b| Spi(u32::from_be_bytes([b[0], b[1], b[2], b[3]])))
                    .filter(|s| crate::esp::group::is_group_spi(*s))
                {
                    return match self.open_group(f, at, spi, pkt.ecn, now) {
                        Ok(v) => v,
                        Err((r, spi)) => self.open_failed(f, r, spi, now),
                    };
                }
            }
            // A failed open is reported with the outer addresses, read from the frame again
            // only then: keeping `pkt` alive across the open made every packet read it back
            // from the stack before the stores that wrote it had retired.
            return match self.open(f, at, encap, pkt.ecn, now) {
                Ok(v) => v,
                Err((DropReason::UnknownSpi, spi)) => self
                    .esp_to_encryption_node(f)
                    .unwrap_or_else(|| self.open_failed(f, DropReason::UnknownSpi, spi, now)),
                Err((r, spi)) => self.open_failed(f, r, spi, now),
            };
        }
        if reassembled {
            return Verdict::Drop(DropReason::ReasmNotIpsec);
        }
        // Clear traffic from the protected side.
        if pkt.hop_limit <= 1 {
            self.send_icmp_error(IcmpError::TimeExceeded, ip_of(f), pkt.ipv6, Side::Wan);
            return Verdict::Drop(DropReason::TtlExceeded);
        }
        let to_masquerade = !pkt.ipv6
            && self
                .nat
                .as_ref()
                .is_some_and(|n| IpAddr::V4(n.external_addr()) == pkt.key.dst);
        if to_masquerade {
            // An answer whose session another worker holds goes there as it came.
            let ip = f.data().get(ethernet::HEADER_LEN..).unwrap_or(&[]);
            if let Some(v) = self.nat_answer_elsewhere(ip) {
                return v;
            }
            if let Some(nat) = self.nat.as_mut() {
                let Some(ip) = f.data_mut().get_mut(ethernet::HEADER_LEN..) else {
                    return Verdict::Drop(DropReason::MalformedIp);
                };
                if let Err(e) = nat.inbound(ip, now) {
                    return Verdict::Drop(nat_reason(e));
                }
                self.counters.count(Traffic::Masqueraded, 1);
                if !decrement_hop_limit(f, false) || !f.adj(ethernet::HEADER_LEN) {
                    return Verdict::Drop(DropReason::MalformedIp);
                }
                return self.forward(f, Side::Lan, false);
            }
        }
        // Clear traffic from a bound host (a road warrior's virtual IP) must come through its
        // tunnel.
        if self
            .hosts
            .get(&pkt.key.src)
            .is_some_and(|(src, _)| src.contains(pkt.key.dst))
        {
            return Verdict::Drop(DropReason::ClearButProtected);
        }
        // Inbound SPD check: look up the mirror image of the flow, as policies are written
        // for the outbound direction (ICMP's type and code stay where they are).
        let icmp = matches!(
            IpProtocol::from(pkt.key.proto),
            IpProtocol::Icmp | IpProtocol::Icmpv6
        );
        let mirror = FlowKey {
            src: pkt.key.dst,
            dst: pkt.key.src,
            proto: pkt.key.proto,
            src_port: if icmp {
                pkt.key.src_port
            } else {
                pkt.key.dst_port
            },
            dst_port: if icmp {
                pkt.key.dst_port
            } else {
                pkt.key.src_port
            },
        };
        let rule = self.spd.lookup(&mirror);
        if let Some(r) = rule {
            self.counters.count_rule(r.id);
        }
        match rule.map(|r| r.action) {
            Some(Action::Bypass) => {
                if !decrement_hop_limit(f, pkt.ipv6) || !f.adj(ethernet::HEADER_LEN) {
                    return Verdict::Drop(DropReason::MalformedIp);
                }
                self.counters.count(Traffic::Bypassed, 1);
                self.forward(f, Side::Lan, pkt.ipv6)
            }
            Some(Action::Protect(_)) => Verdict::Drop(DropReason::ClearButProtected),
            Some(Action::Discard) => Verdict::Drop(DropReason::PolicyDiscard),
            None => Verdict::Drop(DropReason::NoPolicy),
        }
    }

    /// ESP (bare or in UDP) for an SPI this data plane does not hold, whose outer flow an edge
    /// filter passes (`proto::policy::FILTER_RULE_TAG`, action bypass): the client's SAs
    /// live on an encryption node behind this edge (issue 18, M9), so the packet goes on to
    /// the LAN side unchanged (the LAN routes it to that node), counted on the filter rule and
    /// as bypassed, not reported as an unknown SPI (that would move the SA here). None: not
    /// such a packet (the unknown SPI is reported and dropped as before). Off the fast path:
    /// only ESP that failed its SA lookup gets here, parsed again.
    fn esp_to_encryption_node(&mut self, f: &mut P::Frame) -> Option<Verdict> {
        let pkt = parse_ip(f.data()).ok()?;
        let mirror = FlowKey {
            src: pkt.key.dst,
            dst: pkt.key.src,
            proto: pkt.key.proto,
            src_port: pkt.key.dst_port,
            dst_port: pkt.key.src_port,
        };
        let rule = self.spd.lookup(&mirror)?;
        if rule.action != Action::Bypass || proto::policy::filter_index(rule.id).is_none() {
            return None;
        }
        self.counters.count_rule(rule.id);
        if pkt.hop_limit <= 1 {
            self.send_icmp_error(IcmpError::TimeExceeded, ip_of(f), pkt.ipv6, Side::Wan);
            return Some(Verdict::Drop(DropReason::TtlExceeded));
        }
        if !decrement_hop_limit(f, pkt.ipv6) || !f.adj(ethernet::HEADER_LEN) {
            return Some(Verdict::Drop(DropReason::MalformedIp));
        }
        self.counters.count(Traffic::Bypassed, 1);
        Some(self.forward(f, Side::Lan, pkt.ipv6))
    }

    /// UDP on the protected side: ESP-in-UDP (returns where ESP starts), IKE (punted),
    /// keepalive, or plain UDP (None: handled as clear traffic).
    #[inline]
    fn classify_udp(&mut self, f: &P::Frame, pkt: &IpInfo) -> Result<Option<usize>, DropReason> {
        let port = pkt.key.dst_port;
        if port != natt::NATT_PORT && port != natt::IKE_PORT {
            return Ok(None);
        }
        let udp_at = ethernet::HEADER_LEN + pkt.header_len;
        let Some(seg) = f.data().get(udp_at..) else {
            return Err(DropReason::MalformedIp);
        };
        let Ok(u) = udp::Packet::new_checked(seg) else {
            return Err(DropReason::MalformedIp);
        };
        let payload = u.payload();
        if port == natt::IKE_PORT {
            return Err(self.punt(pkt, payload));
        }
        match natt::classify(payload) {
            natt::Kind::Keepalive => Err(DropReason::NatKeepalive),
            natt::Kind::Ike => {
                Err(self.punt(pkt, payload.get(natt::NON_ESP_MARKER_LEN..).unwrap_or(&[])))
            }
            natt::Kind::Esp => Ok(Some(udp_at + udp::HEADER_LEN)),
            natt::Kind::Malformed => Err(DropReason::EspTruncated),
        }
    }

    /// Opens the ESP at `esp_at` and forwards the inner packet; Err: the open itself failed
    /// (unknown SPI, authentication, replay, ...), for the caller to report.
    #[inline]
    pub(super) fn open(
        &mut self,
        f: &mut P::Frame,
        esp_at: usize,
        encap: Encap,
        outer_ecn: u8,
        now: u64,
    ) -> Result<Verdict, (DropReason, Spi)> {
        if !f.adj(esp_at) {
            return Ok(Verdict::Drop(DropReason::EspTruncated));
        }
        let opened = match tunnel::decapsulate_or_defer(&mut self.sad, f, encap, now, true) {
            Ok(Decap::Opened(o)) => o,
            Ok(Decap::Cbc(pending)) => {
                // Opened with the burst's other CBC packets, finished in `open_cbc_burst`.
                return Ok(Verdict::OpenLater(OpenLater {
                    pending,
                    esp_at,
                    outer_ecn,
                    result: Err(crate::crypto::CbcError::Backend),
                }));
            }
            Err(r) => {
                let spi = esp::Packet::new_checked(f.data()).map_or(Spi(0), |p| Spi(p.spi()));
                // Back to the outer header, for the caller's report (a failed open leaves the
                // frame's data where it was).
                let _ = f.prepend(esp_at);
                return Err((r, spi));
            }
        };
        Ok(self.after_open(f, &opened, outer_ecn, now))
    }

    /// An opened packet: its lifetime report, then on to the LAN.
    #[inline]
    pub(super) fn after_open(
        &mut self,
        f: &mut P::Frame,
        opened: &Opened,
        outer_ecn: u8,
        now: u64,
    ) -> Verdict {
        if let Some(c) = opened.crossing {
            self.report_crossing(opened.spi, c, now);
        }
        self.deliver(f, opened, outer_ecn, now)
    }

    /// A failed open of the ESP at `esp_at` (the frame's data starts at the outer header
    /// again): reported with the outer addresses, dropped.
    pub(super) fn open_failed(
        &mut self,
        f: &P::Frame,
        r: DropReason,
        spi: Spi,
        now: u64,
    ) -> Verdict {
        let unspecified = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let (src, dst) = outer_addrs(f.data()).unwrap_or((unspecified, unspecified));
        let src_port = outer_udp_src_port(f.data()).unwrap_or(0);
        self.report_failure(r, spi, (src, src_port), dst, now);
        Verdict::Drop(r)
    }

    /// Checks an opened packet against its SA's selectors, applies the RFC 6040 ECN outcome
    /// and the hop limit, and forwards it to the LAN.
    #[inline]
    fn deliver(&mut self, f: &mut P::Frame, opened: &Opened, outer_ecn: u8, now: u64) -> Verdict {
        // Drops from here on are also counted on the SA (looked up again only then: the hot
        // path holds no reference to it).
        let sa_drop = |sad: &Sad, groups: &Groups, r: DropReason| {
            if let Some(sa) = sad.inbound(opened.spi) {
                sa.counters.record_drop(r);
            } else if let Some(c) = groups.counters(opened.spi) {
                c.record_drop(r);
            }
            Verdict::Drop(r)
        };
        let inner = match parse_inner(f.data(), opened.next_header) {
            Ok(i) => i,
            Err(r) => return sa_drop(&self.sad, &self.groups, r),
        };
        // The inner packet must be what this SA was negotiated to carry (RFC 4301 5.2).
        if !opened.selectors_ok {
            return sa_drop(&self.sad, &self.groups, DropReason::PolicyMismatch);
        }
        if inner.hop_limit <= 1 {
            // Back into the tunnel it came from (traceroute through the tunnel).
            self.send_icmp_error(IcmpError::TimeExceeded, f.data(), inner.ipv6, Side::Wan);
            return sa_drop(&self.sad, &self.groups, DropReason::TtlExceeded);
        }
        // RFC 6040 decapsulation: CE on the outer marks an ECN-capable inner packet; a
        // Not-ECT inner packet with CE outside must be dropped.
        let new_ecn = match (outer_ecn, inner.ecn) {
            (3, 0) => return sa_drop(&self.sad, &self.groups, DropReason::InnerMalformed),
            (3, _) => 3,
            (1, 2) => 1,
            (_, e) => e,
        };
        if !rewrite_inner(f.data_mut(), inner.ipv6, new_ecn) {
            return Verdict::Drop(DropReason::InnerMalformed);
        }
        // A client: answers to the virtual IP go back to the LAN host that opened the flow. A
        // flow no LAN host opened through the masquerade (another client's, on a direct SA or
        // through the gateway; an echo request) is for the virtual IP itself: it goes to the
        // LAN as it is, where only a host that holds the virtual IP takes it.
        if let Some(nat) = self.vip_nat.as_mut() {
            if IpAddr::V4(nat.external_addr()) == inner.key.dst {
                // Its session is another worker's (per-core SAs): counted here, sent there.
                if let Some(v) = self.vip_answer_elsewhere(f.data()) {
                    self.counters.count(Traffic::Decrypted, 1);
                    self.counters
                        .count(Traffic::DecryptedBytes, opened.inner_len as u64);
                    return v;
                }
                if let Err(reason) = self.vip_unmasquerade(f.data_mut(), now) {
                    return sa_drop(&self.sad, &self.groups, reason);
                }
            }
        }
        self.counters.count(Traffic::Decrypted, 1);
        self.counters
            .count(Traffic::DecryptedBytes, opened.inner_len as u64);
        // A client's connection masqueraded per connection (`masq`): to the LAN rewritten.
        if self.masq.is_some() {
            if let Some(v) = self.masq_decrypted(f, &inner) {
                return v;
            }
        }
        // To another road warrior: sealed again onto its SA (`hairpin`).
        if let Some(id) = self.hairpin_target(&inner) {
            return self.hairpin(f, &inner, new_ecn, id, now);
        }
        self.forward(f, Side::Lan, inner.ipv6)
    }
}
