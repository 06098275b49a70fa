//! A pcap writer (classic libpcap format, Ethernet link type, microsecond timestamps) for the
//! lab's capture of the link between gateways, and an `esp_sa` writer whose lines Wireshark
//! and tshark accept, so anyone can decrypt such a capture.

use std::io::{self, Write};

use crate::crypto::{EspAlg, IntegAlg};
use crate::esp::sa::SaParams;

const MAGIC: u32 = 0xa1b2_c3d4;
const LINKTYPE_ETHERNET: u32 = 1;
const SNAPLEN: u32 = 65535;

pub struct PcapWriter<W: Write> {
    out: W,
}

impl<W: Write> PcapWriter<W> {
    pub fn new(mut out: W) -> io::Result<Self> {
        let mut h = Vec::with_capacity(24);
        h.extend_from_slice(&MAGIC.to_le_bytes());
        h.extend_from_slice(&2u16.to_le_bytes());
        h.extend_from_slice(&4u16.to_le_bytes());
        h.extend_from_slice(&0i32.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&SNAPLEN.to_le_bytes());
        h.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        out.write_all(&h)?;
        Ok(PcapWriter { out })
    }

    /// Writes one frame captured at `ts_us` microseconds since the Unix epoch.
    pub fn write(&mut self, ts_us: u64, frame: &[u8]) -> io::Result<()> {
        let caplen = frame.len().min(SNAPLEN as usize);
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&((ts_us / 1_000_000) as u32).to_le_bytes());
        h[4..8].copy_from_slice(&((ts_us % 1_000_000) as u32).to_le_bytes());
        h[8..12].copy_from_slice(&(caplen as u32).to_le_bytes());
        h[12..16].copy_from_slice(&(frame.len() as u32).to_le_bytes());
        self.out.write_all(&h)?;
        self.out.write_all(&frame[..caplen])
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

/// Reads a classic little-endian pcap file (microsecond or nanosecond timestamps, as DPDK's
/// `net_pcap` writes) back into frames (used by tests and tools).
pub fn read_pcap(bytes: &[u8]) -> Result<Vec<Vec<u8>>, &'static str> {
    let magic = bytes
        .get(0..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or("short pcap header")?;
    // 0xa1b23c4d: the nanosecond-resolution variant; records have the same layout.
    if magic != MAGIC && magic != 0xa1b2_3c4d {
        return Err("not a little-endian pcap");
    }
    let mut at = 24;
    let mut frames = Vec::new();
    while at < bytes.len() {
        let h = bytes.get(at..at + 16).ok_or("truncated record header")?;
        let caplen = u32::from_le_bytes([h[8], h[9], h[10], h[11]]) as usize;
        let data = bytes
            .get(at + 16..at + 16 + caplen)
            .ok_or("truncated record")?;
        frames.push(data.to_vec());
        at += 16 + caplen;
    }
    Ok(frames)
}

/// One line of Wireshark's `esp_sa` UAT file for an SA: protocol, source, destination, SPI,
/// encryption algorithm and key (AES-GCM: key followed by salt, RFC 4106, authentication
/// "NULL"; AES-CBC: the key, then the HMAC and its key).
/// The caller decides whether exporting keys is allowed (lab only).
pub fn esp_sa_line(p: &SaParams, src: core::net::IpAddr, dst: core::net::IpAddr) -> String {
    let proto = if src.is_ipv4() { "IPv4" } else { "IPv6" };
    let hex = |bytes: &mut dyn Iterator<Item = &u8>| {
        let mut s = String::from("0x");
        for b in bytes {
            s.push_str(&format!("{b:02x}"));
        }
        s
    };
    // Wireshark's names for the algorithms (its esp_sa UAT).
    let (alg, key, auth, auth_key) = match p.keys.alg {
        EspAlg::Aead(_) => (
            "AES-GCM with 16 octet ICV [RFC4106]",
            hex(&mut p.keys.key().iter().chain(p.keys.salt.iter())),
            "NULL",
            String::new(),
        ),
        EspAlg::Cbc(_, integ) => (
            "AES-CBC [RFC3602]",
            hex(&mut p.keys.key().iter()),
            match integ {
                IntegAlg::HmacSha1_96 => "HMAC-SHA-1-96 [RFC2404]",
                IntegAlg::HmacSha256_128 => "HMAC-SHA-256-128 [RFC4868]",
                IntegAlg::HmacSha384_192 => "HMAC-SHA-384-192 [RFC4868]",
                IntegAlg::HmacSha512_256 => "HMAC-SHA-512-256 [RFC4868]",
            },
            hex(&mut p.keys.integ_key().iter()),
        ),
    };
    format!(
        "\"{proto}\",\"{src}\",\"{dst}\",\"{:#010x}\",\"{alg}\",\"{key}\",\"{auth}\",\"{auth_key}\"",
        p.spi.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcap_round_trip() {
        let mut w = PcapWriter::new(Vec::new()).unwrap();
        w.write(1_700_000_000_123_456, &[1, 2, 3]).unwrap();
        w.write(1_700_000_000_123_457, &[4; 70]).unwrap();
        let bytes = w.into_inner();
        assert_eq!(bytes.len(), 24 + 16 + 3 + 16 + 70);
        let frames = read_pcap(&bytes).unwrap();
        assert_eq!(frames, vec![vec![1, 2, 3], vec![4; 70]]);
        assert!(read_pcap(&bytes[..30]).is_err());
    }
}
