//! IKE between the wire and the control plane: datagrams on UDP 500 and 4500 (non-ESP
//! marker) are punted, and the control plane's datagrams are built into frames and sent from
//! the WAN port.
//!
//! Never blocks on the control plane: a punt ring that is absent (`ike_no_control`) or full
//! (`ike_punt_full`: the ring is the bound of the backlog) is a named drop, and
//! a full WAN queue leaves the control plane's datagrams in their ring.

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

    pub(super) fn punt(&mut self, pkt: &IpInfo, payload: &[u8]) -> DropReason {
        let Some(ring) = self.control.punt.as_mut() else {
            return DropReason::IkeNoControl;
        };
        let p = Datagram {
            src: pkt.key.src,
            dst: pkt.key.dst,
            src_port: pkt.key.src_port,
            dst_port: pkt.key.dst_port,
            payload: payload.to_vec(),
        };
        match ring.push(p) {
            Ok(()) => DropReason::IkePunted,
            Err(_) => DropReason::IkePuntFull,
        }
    }
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
