//! IKE between the wire and the control plane: datagrams on UDP 500 and 4500 (non-ESP
//! marker) are punted, and the control plane's datagrams are built into frames and sent from
//! the WAN port.
//!
//! An IPv4 IKE datagram larger than the WAN MTU (an IKE_AUTH with a certificate chain) goes
//! out in IP fragments (RFC 791), as a kernel would send it: without RFC 7383 IKE
//! fragmentation that is how IKE crosses a 1500-byte link. IPv6 datagrams are never
//! fragmented here (a `no_buffer_room` drop if larger than a frame).
//!
//! Never blocks on the control plane: a punt ring that is absent (`ike_no_control`) or full
//! (`ike_punt_full`: the ring is the bound of the backlog) is a named drop, and
//! a full WAN queue leaves the control plane's datagrams in their ring.
//!
//! Two lanes: an IKE_SA_INIT request that echoes a cookie (first payload a COOKIE notify,
//! lengths right: [`natt::is_cookie_echo`]) goes on the cookie lane, a ring of its own
//! (`ike_punted_cookie`, full: `ike_punt_cookie_full`), so that a spoofed flood of requests
//! without cookies, which fills the main ring, cannot make a returning initiator's request
//! wait for its retransmission. Forged echoes can fill only the cookie lane; the control
//! plane reads the lanes in turn, so neither takes more than half of its reads while both
//! have datagrams waiting.

use core::net::IpAddr;

use super::parse::IpInfo;
use super::{Side, Worker, BURST, TXQ_HIGH};
use crate::msg::Datagram;
use crate::port::{Frame, Port};
use crate::stats::{DropReason, Traffic};
use crate::wire::{ipv4, ipv6, natt, udp};

impl<P: Port> Worker<P> {
    /// Sends what the control plane queued, while the WAN queue has room (a full queue leaves
    /// the rest in the ring: back-pressure).
    pub(super) fn transmit_datagrams(&mut self) -> usize {
        let mut sent = 0;
        while self.wan_txq.len() < TXQ_HIGH && sent < BURST {
            let Some(ring) = self.control.transmit.as_mut() else {
                break;
            };
            let Ok(d) = ring.pop() else {
                break;
            };
            sent += 1;
            if d.src.is_ipv4() && datagram_len(&d) > usize::from(self.wan_link.mtu) {
                self.transmit_fragments(&d);
                continue;
            }
            let Some(mut f) = self.wan.alloc() else {
                self.counters.record_drop(DropReason::NoBufferRoom);
                continue;
            };
            match build_datagram(&mut f, &d) {
                Ok(ipv6) => {
                    // To the next hop's MAC, resolved first where the link has no configured
                    // neighbour.
                    if self.send_originated(Side::Wan, f, ipv6) {
                        self.counters.count(Traffic::IkeSent, 1);
                    }
                }
                Err(r) => self.counters.record_drop(r),
            }
        }
        sent
    }

    /// Sends IPv4 datagram `d` in fragments that fit the WAN MTU (offsets in units of 8).
    fn transmit_fragments(&mut self, d: &Datagram) {
        let mut whole = Scratch(Vec::new());
        if let Err(r) = build_datagram(&mut whole, d) {
            self.counters.record_drop(r);
            return;
        }
        let data = whole.data();
        let (Some(header), Some(payload)) =
            (data.get(..ipv4::HEADER_LEN), data.get(ipv4::HEADER_LEN..))
        else {
            self.counters.record_drop(DropReason::NoBufferRoom);
            return;
        };
        let step = usize::from(self.wan_link.mtu).saturating_sub(ipv4::HEADER_LEN) & !7;
        if step == 0 {
            self.counters.record_drop(DropReason::NoBufferRoom);
            return;
        }
        let ident = self.ike_frag_ident;
        self.ike_frag_ident = self.ike_frag_ident.wrapping_add(1).max(1);
        let mut frames = Vec::new();
        for (i, chunk) in payload.chunks(step).enumerate() {
            let Some(mut f) = self.wan.alloc() else {
                self.counters.record_drop(DropReason::NoBufferRoom);
                return;
            };
            let len = ipv4::HEADER_LEN + chunk.len();
            let offset = i * step;
            if !f.append(len) || offset > usize::from(u16::MAX) {
                self.counters.record_drop(DropReason::NoBufferRoom);
                return;
            }
            let buf = f.data_mut();
            let (h, body) = buf.split_at_mut(ipv4::HEADER_LEN);
            h.copy_from_slice(header);
            body.copy_from_slice(chunk);
            let mut ip = ipv4::Packet::new_unchecked(&mut buf[..]);
            ip.set_total_len(len as u16);
            ip.set_ident(ident);
            ip.set_dont_frag(false);
            ip.set_more_frags(offset + chunk.len() < payload.len());
            ip.set_frag_offset(offset as u16);
            ip.fill_checksum();
            frames.push(f);
        }
        let n = frames.len();
        let mut ok = true;
        for f in frames {
            ok &= self.send_originated(Side::Wan, f, false);
        }
        if ok && n > 0 {
            self.counters.count(Traffic::IkeSent, 1);
        }
    }

    pub(super) fn punt(&mut self, pkt: &IpInfo, payload: &[u8]) -> DropReason {
        let cookie_lane = self.control.punt_cookie.is_some() && natt::is_cookie_echo(payload);
        let ring = if cookie_lane {
            self.control.punt_cookie.as_mut()
        } else {
            self.control.punt.as_mut()
        };
        let Some(ring) = ring else {
            return DropReason::IkeNoControl;
        };
        let p = Datagram {
            src: pkt.key.src,
            dst: pkt.key.dst,
            src_port: pkt.key.src_port,
            dst_port: pkt.key.dst_port,
            payload: payload.to_vec(),
        };
        match (ring.push(p), cookie_lane) {
            (Ok(()), false) => DropReason::IkePunted,
            (Ok(()), true) => DropReason::IkePuntedCookie,
            (Err(_), false) => DropReason::IkePuntFull,
            (Err(_), true) => DropReason::IkePuntCookieFull,
        }
    }
}

/// A whole datagram built before it is cut into fragments (larger than any frame).
struct Scratch(Vec<u8>);

impl Frame for Scratch {
    fn data(&self) -> &[u8] {
        &self.0
    }
    fn data_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
    fn headroom(&self) -> usize {
        0
    }
    fn tailroom(&self) -> usize {
        usize::from(u16::MAX).saturating_sub(self.0.len())
    }
    fn prepend(&mut self, _: usize) -> bool {
        false
    }
    fn adj(&mut self, _: usize) -> bool {
        false
    }
    fn append(&mut self, n: usize) -> bool {
        if n > self.tailroom() {
            return false;
        }
        self.0.resize(self.0.len() + n, 0);
        true
    }
    fn truncate(&mut self, len: usize) {
        self.0.truncate(len);
    }
}

/// The IP datagram `d` becomes: IP and UDP headers, the non-ESP marker on 4500, the payload.
fn datagram_len(d: &Datagram) -> usize {
    let ip = if d.src.is_ipv4() {
        ipv4::HEADER_LEN
    } else {
        ipv6::HEADER_LEN
    };
    let marker = if d.src_port == natt::NATT_PORT || d.dst_port == natt::NATT_PORT {
        natt::NON_ESP_MARKER_LEN
    } else {
        0
    };
    ip + udp::HEADER_LEN + marker + d.payload.len()
}

/// Writes `d` into the empty frame `f` as IPv4/IPv6 + UDP (+ the non-ESP marker on port
/// 4500) + payload. Returns whether it is IPv6.
fn build_datagram<F: Frame>(f: &mut F, d: &Datagram) -> Result<bool, DropReason> {
    let marker = if d.src_port == natt::NATT_PORT || d.dst_port == natt::NATT_PORT {
        natt::NON_ESP_MARKER_LEN
    } else {
        0
    };
    let udp_len = udp::HEADER_LEN + marker + d.payload.len();
    let (ipv6, ip_len) = match (d.src, d.dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) => (false, ipv4::HEADER_LEN),
        (IpAddr::V6(_), IpAddr::V6(_)) => (true, ipv6::HEADER_LEN),
        _ => return Err(DropReason::MalformedIp),
    };
    if ip_len + udp_len > usize::from(u16::MAX) || !f.append(ip_len + udp_len) {
        return Err(DropReason::NoBufferRoom);
    }
    let buf = f.data_mut();
    let Some((ip, seg)) = buf.split_at_mut_checked(ip_len) else {
        return Err(DropReason::NoBufferRoom);
    };
    match (d.src, d.dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => ipv4::Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: crate::wire::IpProtocol::Udp,
            payload_len: udp_len,
            hop_limit: 64,
            dscp: 0,
            ecn: 0,
            ident: 0,
            dont_frag: true,
        }
        .emit(&mut ipv4::Packet::new_unchecked(ip)),
        (IpAddr::V6(src), IpAddr::V6(dst)) => ipv6::Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: crate::wire::IpProtocol::Udp,
            payload_len: udp_len,
            hop_limit: 64,
            dscp: 0,
            ecn: 0,
            flow_label: 0,
        }
        .emit(&mut ipv6::Packet::new_unchecked(ip)),
        _ => return Err(DropReason::MalformedIp),
    }
    let Some(body) = seg.get_mut(udp::HEADER_LEN..) else {
        return Err(DropReason::NoBufferRoom);
    };
    let (m, payload) = body.split_at_mut(marker);
    m.fill(0);
    payload.copy_from_slice(&d.payload);
    let mut u = udp::Packet::new_unchecked(seg);
    udp::Repr {
        src_port: d.src_port,
        dst_port: d.dst_port,
        payload_len: marker + d.payload.len(),
    }
    .emit(&mut u);
    u.fill_checksum(&d.src, &d.dst);
    Ok(ipv6)
}
