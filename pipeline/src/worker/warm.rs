//! Prefetching a burst's SA state ahead of processing it, when the SAD is too large for the
//! cache.

use core::net::IpAddr;

use super::{Side, Worker, BURST, WARM_SAS_ABOVE};
use crate::ids::Spi;
use crate::port::{Frame, Port};
use crate::wire::{esp, ethernet, ipv4, natt, udp, EtherType, IpProtocol};

/// No slot: the frame is not ESP to a known SA (or not to a bound host).
const NONE: u32 = u32::MAX;

impl<P: Port> Worker<P> {
    /// With many SAs, a packet's SA state (table slot, record, counters, replay word, key
    /// data) is likely not in the cache, and looked up packet by packet each miss waits for
    /// the one before (slot, then record, then what the record points to). This pass walks
    /// the burst in stages, each prefetching for every frame what the next stage reads, so
    /// that the misses of a burst overlap and processing then finds them cached:
    /// inbound, (1) the SPI's table slot, (2) the record, (3) the counters' line, the replay
    /// window's word and the key data the packet's length needs; outbound, (1) the bound
    /// host's bucket, (2) the SA's index entry, (3) its record, (4) its counters and key
    /// data.
    /// Covered: inbound ESP over IPv4 (raw or UDP 4500) and outbound IPv4 to a bound host (a
    /// road warrior's virtual IP), the many-SA cases; SPD-selected SAs are not prefetched.
    #[inline]
    pub(super) fn warm_burst(&self, rx: &[P::Frame], side: Side) {
        if self.sad.inbound_len() + self.sad.outbound_len() < WARM_SAS_ABOVE {
            return;
        }
        let rx = rx.get(..BURST).unwrap_or(rx);
        // Per frame: the record's slab slot, the ESP sequence number (low half) and length.
        let mut at = [(NONE, 0u32, 0usize); BURST];
        match side {
            Side::Wan => {
                let mut spis = [Spi(0); BURST];
                for ((f, spi), a) in rx.iter().zip(spis.iter_mut()).zip(at.iter_mut()) {
                    if let Some((s, seq, len)) = peek_esp(f.data()) {
                        self.sad.prefetch_spi(s);
                        *spi = s;
                        *a = (NONE, seq, len);
                    }
                }
                for (spi, a) in spis.iter().zip(at.iter_mut()).take(rx.len()) {
                    if let Some(slot) = self.sad.inbound_slot(*spi) {
                        self.sad.prefetch_inbound_at(slot);
                        a.0 = slot;
                    }
                }
                for &(slot, seq, len) in at.iter().take(rx.len()) {
                    if let Some(sa) = self.sad.inbound_at(slot) {
                        crate::prefetch::line(&*sa.counters);
                        sa.replay.prefetch(seq);
                        sa.cipher.prefetch(len);
                    }
                }
            }
            Side::Lan => {
                // Per frame: the destination (0: none) and, once looked up, its SA's id.
                let mut dst = [(0u32, NONE, 0usize); BURST];
                for (f, d) in rx.iter().zip(dst.iter_mut()) {
                    let Some(ip) = ipv4_of(f.data()) else {
                        continue;
                    };
                    let a = u32::from(ip.dst_addr());
                    self.hosts.prefetch_v4(a);
                    // ESP seals the IP packet, padded, plus its trailer.
                    *d = (a, NONE, usize::from(ip.total_len()) + 2);
                }
                for (a, id, _) in dst.iter_mut().take(rx.len()) {
                    if *a == 0 {
                        continue;
                    }
                    if let Some((_, sa)) = self.hosts.get(&IpAddr::V4((*a).into())) {
                        self.sad.prefetch_outbound_slot(*sa);
                        *id = sa.0;
                    }
                }
                for (&(_, id, len), a) in dst.iter().zip(at.iter_mut()).take(rx.len()) {
                    if id == NONE {
                        continue;
                    }
                    if let Some(slot) = self.sad.outbound_slot(crate::ids::SaId(id)) {
                        self.sad.prefetch_outbound_at(slot);
                        *a = (slot, 0, len);
                    }
                }
                for &(slot, _, len) in at.iter().take(rx.len()) {
                    if let Some(sa) = self.sad.outbound_at(slot) {
                        crate::prefetch::line(&*sa.counters);
                        sa.cipher.prefetch(len);
                    }
                }
            }
        }
    }
}

/// The IPv4 packet of an Ethernet frame, checked as far as its length fields.
#[inline]
fn ipv4_of(frame: &[u8]) -> Option<ipv4::Packet<&[u8]>> {
    if ethernet::Frame::new_checked(frame).ok()?.ethertype() != EtherType::Ipv4 {
        return None;
    }
    ipv4::Packet::new_checked(frame.get(ethernet::HEADER_LEN..)?).ok()
}

/// The SPI, sequence number (low half) and length of the ESP in an IPv4 frame, raw or in UDP
/// 4500 (for [`Worker::warm_burst`]; the real classification comes later and checks
/// everything).
#[inline]
fn peek_esp(frame: &[u8]) -> Option<(Spi, u32, usize)> {
    let of = |esp_bytes: &[u8]| {
        let p = esp::Packet::new_checked(esp_bytes).ok()?;
        Some((Spi(p.spi()), p.seq_number(), esp_bytes.len()))
    };
    let ip = ipv4_of(frame)?;
    match ip.next_header() {
        IpProtocol::Esp => of(ip.payload()),
        IpProtocol::Udp => {
            let u = udp::Packet::new_checked(ip.payload()).ok()?;
            (u.dst_port() == natt::NATT_PORT)
                .then(|| of(u.payload()))
                .flatten()
        }
        _ => None,
    }
}

/// The SPI of [`peek_esp`].
#[cfg(test)]
fn peek_spi(frame: &[u8]) -> Option<Spi> {
    peek_esp(frame).map(|(s, ..)| s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet + IPv4 frame carrying `l4` as protocol `proto`.
    fn frame(proto: IpProtocol, l4: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; ethernet::HEADER_LEN + ipv4::HEADER_LEN];
        ethernet::Frame::new_unchecked(&mut f[..]).set_ethertype(EtherType::Ipv4);
        ipv4::Repr {
            src_addr: "192.0.2.2".parse().unwrap(),
            dst_addr: "192.0.2.1".parse().unwrap(),
            next_header: proto,
            payload_len: l4.len(),
            hop_limit: 64,
            dscp: 0,
            ecn: 0,
            ident: 0,
            dont_frag: true,
        }
        .emit(&mut ipv4::Packet::new_unchecked(
            &mut f[ethernet::HEADER_LEN..],
        ));
        f.extend_from_slice(l4);
        f
    }

    /// UDP from and to `port` around `payload`.
    fn udp_seg(port: u16, payload: &[u8]) -> Vec<u8> {
        let mut seg = vec![0u8; udp::HEADER_LEN];
        seg.extend_from_slice(payload);
        udp::Repr {
            src_port: port,
            dst_port: port,
            payload_len: payload.len(),
        }
        .emit(&mut udp::Packet::new_unchecked(&mut seg[..]));
        seg
    }

    #[test]
    fn peek_spi_finds_raw_and_udp_encapsulated_esp_and_nothing_else() {
        let mut esp_hdr = 0x0102_0304u32.to_be_bytes().to_vec();
        esp_hdr.extend_from_slice(&7u32.to_be_bytes());
        let raw = frame(IpProtocol::Esp, &esp_hdr);
        assert_eq!(peek_spi(&raw), Some(Spi(0x0102_0304)));
        let mut esp_hdr = 0x0a0b_0c0du32.to_be_bytes().to_vec();
        esp_hdr.extend_from_slice(&7u32.to_be_bytes());
        let in_udp = frame(IpProtocol::Udp, &udp_seg(natt::NATT_PORT, &esp_hdr));
        assert_eq!(peek_spi(&in_udp), Some(Spi(0x0a0b_0c0d)));
        let ike = frame(IpProtocol::Udp, &udp_seg(natt::IKE_PORT, &esp_hdr));
        assert_eq!(peek_spi(&ike), None, "IKE on 500 is not ESP");
        // Truncated anywhere before the end of the ESP header, or an IHL pointing past the
        // end: None, never a panic.
        for n in 0..raw.len() {
            assert_eq!(peek_spi(&raw[..n]), None, "{n} bytes");
        }
        for n in 0..in_udp.len() {
            assert_eq!(peek_spi(&in_udp[..n]), None, "{n} bytes");
        }
        let mut long_ihl = raw.clone();
        long_ihl[ethernet::HEADER_LEN] = 0x4f;
        assert_eq!(peek_spi(&long_ihl), None);
    }
}
