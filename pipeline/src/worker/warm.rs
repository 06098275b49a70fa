//! Reading a burst's SA state ahead of processing it, when the SAD is too large for the cache.

use core::net::{IpAddr, Ipv4Addr};

use super::{Side, Worker, WARM_SAS_ABOVE};
use crate::ids::Spi;
use crate::port::{Frame, Port};
use crate::wire::natt;

impl<P: Port> Worker<P> {
    /// With many SAs, a packet's SA state (table slot, record, counters) is likely not in
    /// the cache, and looked up packet by packet each miss waits for the one before. This
    /// pass reads, for every frame of the burst, the SA state its lookup will reach, with no
    /// dependence between frames, so the misses of a burst overlap; processing then finds
    /// them cached. Plain loads: the fast path has no `unsafe` for a prefetch instruction.
    /// Covered: inbound ESP over IPv4 (raw or UDP 4500) and outbound IPv4 to a bound host (a
    /// road warrior's virtual IP), the many-SA cases; SPD-selected SAs are not read ahead.
    pub(super) fn warm_burst(&self, rx: &[P::Frame], side: Side) {
        if self.sad.inbound_len() + self.sad.outbound_len() < WARM_SAS_ABOVE {
            return;
        }
        let mut sink = 0u64;
        for f in rx {
            let d = f.data();
            match side {
                Side::Wan => {
                    if let Some(sa) = peek_spi(d).and_then(|spi| self.sad.inbound(spi)) {
                        sink ^= sa.counters.packets.get() ^ u64::from(sa.cipher.warm());
                    }
                }
                Side::Lan => {
                    let dst = match d.get(30..34) {
                        Some(&[a, b, c, e]) if d.get(12..14) == Some(&[0x08, 0x00][..]) => {
                            IpAddr::V4(Ipv4Addr::new(a, b, c, e))
                        }
                        _ => continue,
                    };
                    if let Some(sa) = self
                        .hosts
                        .get(&dst)
                        .and_then(|(_, id)| self.sad.outbound(*id))
                    {
                        sink ^= sa.counters.packets.get() ^ sa.seq ^ u64::from(sa.cipher.warm());
                    }
                }
            }
        }
        core::hint::black_box(sink);
    }
}

/// The SPI of an IPv4 frame carrying ESP, raw or in UDP 4500 (for [`Worker::warm_burst`];
/// the real classification comes later and checks everything).
fn peek_spi(d: &[u8]) -> Option<Spi> {
    if d.get(12..14)? != [0x08, 0x00] {
        return None;
    }
    let ihl = usize::from(d.get(14)? & 0x0f) * 4;
    let at = match *d.get(23)? {
        50 => 14 + ihl,
        17 if d.get(14 + ihl + 2..14 + ihl + 4)? == natt::NATT_PORT.to_be_bytes() => 14 + ihl + 8,
        _ => return None,
    };
    let b = d.get(at..at + 4)?;
    Some(Spi(u32::from_be_bytes([b[0], b[1], b[2], b[3]])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peek_spi_finds_raw_and_udp_encapsulated_esp_and_nothing_else() {
        let mut raw = vec![0u8; 14 + 20 + 8];
        raw[12..14].copy_from_slice(&[0x08, 0x00]);
        raw[14] = 0x45;
        raw[23] = 50;
        raw[34..38].copy_from_slice(&0x0102_0304u32.to_be_bytes());
        assert_eq!(peek_spi(&raw), Some(Spi(0x0102_0304)));
        let mut udp = vec![0u8; 14 + 20 + 8 + 8];
        udp[12..14].copy_from_slice(&[0x08, 0x00]);
        udp[14] = 0x45;
        udp[23] = 17;
        udp[36..38].copy_from_slice(&4500u16.to_be_bytes());
        udp[42..46].copy_from_slice(&0x0a0b_0c0du32.to_be_bytes());
        assert_eq!(peek_spi(&udp), Some(Spi(0x0a0b_0c0d)));
        udp[36..38].copy_from_slice(&500u16.to_be_bytes());
        assert_eq!(peek_spi(&udp), None, "IKE on 500 is not ESP");
        // Truncated before the SPI's last byte, or an IHL pointing past the end: None, never
        // a panic.
        for n in 0..14 + 20 + 4 {
            assert_eq!(peek_spi(&raw[..n]), None, "{n} bytes");
        }
        raw[14] = 0x4f;
        assert_eq!(peek_spi(&raw), None);
    }
}
