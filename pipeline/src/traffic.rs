//! A traffic generator and sink for the in-memory port: the simulated LAN hosts of the lab,
//! the tests and the perf lab.
//!
//! Frames are UDP datagrams built from per-flow templates; each carries a stamp (magic, flow,
//! sequence number, send time) so the sink can count loss, reordering and duplicates per flow
//! and measure latency. Time is passed in, never read here.

use core::net::IpAddr;

use crate::port::mem::MemFrame;
use crate::port::Frame;
use crate::wire::{checksum, ethernet, ipv4, ipv6, udp, EtherType, IpProtocol};

pub const STAMP_MAGIC: u32 = 0x5247_4c42;
/// magic (4) + flow (2) + seq (8) + send time in ns (8).
pub const STAMP_LEN: usize = 22;

/// One unidirectional UDP flow from a LAN host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowSpec {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
}

impl FlowSpec {
    fn headers_len(&self) -> usize {
        ethernet::HEADER_LEN
            + if self.src.is_ipv4() {
                ipv4::HEADER_LEN
            } else {
                ipv6::HEADER_LEN
            }
            + udp::HEADER_LEN
    }

    /// Smallest Ethernet frame (no FCS) this flow can send with a stamp.
    pub fn min_frame_len(&self) -> usize {
        self.headers_len() + STAMP_LEN
    }

    /// A complete frame of `frame_len` bytes with a zero stamp and the UDP checksum computed
    /// over it (so a stamp can be folded in incrementally).
    fn template(&self, frame_len: usize) -> Vec<u8> {
        let frame_len = frame_len.max(self.min_frame_len());
        let mut buf = vec![0u8; frame_len];
        let hl = self.headers_len();
        let udp_len = frame_len - hl + udp::HEADER_LEN;
        // Payload: a recognisable pattern after the stamp.
        for (i, b) in buf[hl + STAMP_LEN..].iter_mut().enumerate() {
            *b = i as u8;
        }
        let ipv6 = self.src.is_ipv6();
        ethernet::Repr {
            src_addr: self.src_mac,
            dst_addr: self.dst_mac,
            ethertype: if ipv6 {
                EtherType::Ipv6
            } else {
                EtherType::Ipv4
            },
        }
        .emit(&mut ethernet::Frame::new_unchecked(&mut buf[..]));
        let ip_at = ethernet::HEADER_LEN;
        let udp_at = match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                ipv4::Repr {
                    src_addr: s,
                    dst_addr: d,
                    next_header: IpProtocol::Udp,
                    payload_len: udp_len,
                    hop_limit: 64,
                    dscp: 0,
                    ecn: 0,
                    ident: 0,
                    dont_frag: true,
                }
                .emit(&mut ipv4::Packet::new_unchecked(&mut buf[ip_at..]));
                ip_at + ipv4::HEADER_LEN
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                ipv6::Repr {
                    src_addr: s,
                    dst_addr: d,
                    next_header: IpProtocol::Udp,
                    payload_len: udp_len,
                    hop_limit: 64,
                    dscp: 0,
                    ecn: 0,
                    flow_label: 0,
                }
                .emit(&mut ipv6::Packet::new_unchecked(&mut buf[ip_at..]));
                ip_at + ipv6::HEADER_LEN
            }
            _ => ip_at,
        };
        let mut u = udp::Packet::new_unchecked(&mut buf[udp_at..]);
        u.set_src_port(self.src_port);
        u.set_dst_port(self.dst_port);
        u.set_len(udp_len as u16);
        u.set_checksum(0);
        u.fill_checksum(&self.src, &self.dst);
        buf
    }
}

/// Generates frames round-robin over flows and frame sizes.
pub struct Generator {
    flows: Vec<FlowSpec>,
    /// templates[flow][size]
    templates: Vec<Vec<Vec<u8>>>,
    next_seq: Vec<u64>,
    turn: usize,
    sizes: usize,
}

impl Generator {
    /// `frame_sizes` are Ethernet frame lengths without FCS (64 = the classic minimum); a size
    /// below what a flow's headers and stamp need is raised to that minimum.
    pub fn new(flows: Vec<FlowSpec>, frame_sizes: &[usize]) -> Self {
        let templates = flows
            .iter()
            .map(|f| frame_sizes.iter().map(|s| f.template(*s)).collect())
            .collect();
        Generator {
            next_seq: vec![0; flows.len()],
            flows,
            templates,
            turn: 0,
            sizes: frame_sizes.len().max(1),
        }
    }

    pub fn flows(&self) -> &[FlowSpec] {
        &self.flows
    }

    /// Packets generated so far per flow.
    pub fn sent(&self) -> &[u64] {
        &self.next_seq
    }

    /// Writes the next frame into `f`. Returns its length.
    pub fn fill(&mut self, f: &mut MemFrame, now_ns: u64) -> usize {
        let nflows = self.flows.len();
        if nflows == 0 {
            return 0;
        }
        let flow = self.turn % nflows;
        let size = (self.turn / nflows) % self.sizes;
        self.turn = self.turn.wrapping_add(1);
        let seq = self.next_seq[flow];
        self.next_seq[flow] += 1;
        let Some(t) = self.templates.get(flow).and_then(|t| t.get(size)) else {
            return 0;
        };
        if !f.set_data(t) {
            return 0;
        }
        let spec = self.flows[flow];
        let at = spec.headers_len();
        let mut stamp = [0u8; STAMP_LEN];
        stamp[0..4].copy_from_slice(&STAMP_MAGIC.to_be_bytes());
        stamp[4..6].copy_from_slice(&(flow as u16).to_be_bytes());
        stamp[6..14].copy_from_slice(&seq.to_be_bytes());
        stamp[14..22].copy_from_slice(&now_ns.to_be_bytes());
        let d = f.data_mut();
        if let Some(dst) = d.get_mut(at..at + STAMP_LEN) {
            dst.copy_from_slice(&stamp);
        }
        // Fold the stamp into the UDP checksum (RFC 1624: the template summed zeros there).
        let ck_at = at - udp::HEADER_LEN + 6;
        if let Some(ck) = d.get_mut(ck_at..ck_at + 2) {
            let old = u16::from_be_bytes([ck[0], ck[1]]);
            let mut sum = u32::from(!old);
            for w in stamp.chunks(2) {
                sum += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
            }
            let folded = checksum::fold(sum);
            let mut new = !folded;
            if new == 0 {
                new = 0xffff;
            }
            ck.copy_from_slice(&new.to_be_bytes());
        }
        t.len()
    }
}

/// Per-flow receive statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    pub received: u64,
    /// Highest sequence number seen + 1.
    pub next_expected: u64,
    /// Frames that arrived with a lower sequence number than one already seen.
    pub reordered: u64,
    /// Sequence numbers skipped (may later arrive reordered).
    pub gaps: u64,
    pub bytes: u64,
}

/// Counts what arrives and checks it is intact.
#[derive(Default)]
pub struct Sink {
    pub flows: Vec<FlowStats>,
    /// Frames without a valid stamp or with a bad UDP checksum.
    pub corrupt: u64,
}

impl Sink {
    pub fn new(flows: usize) -> Self {
        Sink {
            flows: vec![FlowStats::default(); flows],
            corrupt: 0,
        }
    }

    /// Accounts one received frame; returns its one-way latency in ns if it carried a stamp.
    pub fn observe(&mut self, frame: &[u8], now_ns: u64) -> Option<u64> {
        let Some((flow, seq, sent)) = parse_stamp(frame) else {
            self.corrupt += 1;
            return None;
        };
        let Some(st) = self.flows.get_mut(usize::from(flow)) else {
            self.corrupt += 1;
            return None;
        };
        st.received += 1;
        st.bytes += frame.len() as u64;
        if seq >= st.next_expected {
            st.gaps += seq - st.next_expected;
            st.next_expected = seq + 1;
        } else {
            st.reordered += 1;
        }
        Some(now_ns.saturating_sub(sent))
    }

    pub fn received(&self) -> u64 {
        self.flows.iter().map(|f| f.received).sum()
    }
}

/// Finds and verifies the stamp of a generated frame: (flow, seq, sent ns).
pub fn parse_stamp(frame: &[u8]) -> Option<(u16, u64, u64)> {
    let eth = ethernet::Frame::new_checked(frame).ok()?;
    let ip = frame.get(ethernet::HEADER_LEN..)?;
    let (src, dst, l4) = match eth.ethertype() {
        EtherType::Ipv4 => {
            let p = ipv4::Packet::new_checked(ip).ok()?;
            if p.next_header() != IpProtocol::Udp {
                return None;
            }
            (
                IpAddr::V4(p.src_addr()),
                IpAddr::V4(p.dst_addr()),
                ip.get(usize::from(p.header_len())..usize::from(p.total_len()))?,
            )
        }
        EtherType::Ipv6 => {
            let p = ipv6::Packet::new_checked(ip).ok()?;
            if p.next_header() != IpProtocol::Udp {
                return None;
            }
            (
                IpAddr::V6(p.src_addr()),
                IpAddr::V6(p.dst_addr()),
                ip.get(ipv6::HEADER_LEN..ipv6::HEADER_LEN + usize::from(p.payload_len()))?,
            )
        }
        _ => return None,
    };
    let u = udp::Packet::new_checked(l4).ok()?;
    if u.checksum() != 0 && !u.verify_checksum(&src, &dst) {
        return None;
    }
    let s = u.payload().get(..STAMP_LEN)?;
    if u32::from_be_bytes(s[0..4].try_into().ok()?) != STAMP_MAGIC {
        return None;
    }
    Some((
        u16::from_be_bytes(s[4..6].try_into().ok()?),
        u64::from_be_bytes(s[6..14].try_into().ok()?),
        u64::from_be_bytes(s[14..22].try_into().ok()?),
    ))
}
