//! ICMP for IPv4 (RFC 792): the message view, a `Repr`, and builders for the messages the
//! gateway originates (echo, "fragmentation needed", "time exceeded").
//!
//! A view covers exactly one ICMP message (the IP payload): the checksum covers all of it.
//! Builders write a whole IPv4 packet (header + ICMP) into a caller's buffer and return its
//! length; an error message carries as much of the invoking packet as fits in
//! [`ipv4::MIN_MTU`] (576) bytes (RFC 1812 4.3.2.3).

use core::net::Ipv4Addr;

use super::bytes::{self, Field, Rest};
use super::{checksum, ipv4, Error, IpProtocol, Result};

/// Length of the ICMP header (type, code, checksum, 4 bytes rest-of-header).
pub const HEADER_LEN: usize = 8;
/// TTL of the packets the builders write.
pub const DEFAULT_TTL: u8 = 64;
/// Destination unreachable code "fragmentation needed and DF set" (RFC 1191).
pub const CODE_FRAG_NEEDED: u8 = 4;
/// Time exceeded code "TTL exceeded in transit".
pub const CODE_TTL_EXCEEDED: u8 = 0;
/// Destination unreachable, code 1: host unreachable.
pub const CODE_HOST_UNREACHABLE: u8 = 1;

mod field {
    use super::{Field, Rest};
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Field = 2..4;
    pub const REST: Field = 4..8;
    pub const ECHO_IDENT: Field = 4..6;
    pub const ECHO_SEQNO: Field = 6..8;
    pub const MTU: Field = 6..8;
    pub const DATA: Rest = 8..;
}

/// ICMP message types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Message {
    EchoReply,
    DstUnreachable,
    Redirect,
    EchoRequest,
    TimeExceeded,
    ParamProblem,
    Unknown(u8),
}

impl Message {
    /// True for the error messages that carry an invoking packet.
    pub fn is_error(self) -> bool {
        matches!(
            self,
            Message::DstUnreachable
                | Message::Redirect
                | Message::TimeExceeded
                | Message::ParamProblem
        ) || self == Message::Unknown(4) // source quench (deprecated)
    }
}

impl From<u8> for Message {
    fn from(v: u8) -> Self {
        match v {
            0 => Message::EchoReply,
            3 => Message::DstUnreachable,
            5 => Message::Redirect,
            8 => Message::EchoRequest,
            11 => Message::TimeExceeded,
            12 => Message::ParamProblem,
            other => Message::Unknown(other),
        }
    }
}

impl From<Message> for u8 {
    fn from(m: Message) -> u8 {
        match m {
            Message::EchoReply => 0,
            Message::DstUnreachable => 3,
            Message::Redirect => 5,
            Message::EchoRequest => 8,
            Message::TimeExceeded => 11,
            Message::ParamProblem => 12,
            Message::Unknown(v) => v,
        }
    }
}

/// A view of an ICMP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buffer` without checking it.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps `buffer` and runs [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// `Truncated` if shorter than the 8-byte header.
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(Error::Truncated)
        } else {
            Ok(())
        }
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    pub fn msg_type(&self) -> Message {
        Message::from(bytes::get_u8(self.b(), field::TYPE))
    }

    pub fn msg_code(&self) -> u8 {
        bytes::get_u8(self.b(), field::CODE)
    }

    pub fn checksum(&self) -> u16 {
        bytes::get_u16(self.b(), field::CHECKSUM)
    }

    /// The 4 bytes after the checksum, whatever the type.
    pub fn rest_of_header(&self) -> u32 {
        bytes::get_u32(self.b(), field::REST)
    }

    /// Echo identifier (meaningful for echo request/reply).
    pub fn echo_ident(&self) -> u16 {
        bytes::get_u16(self.b(), field::ECHO_IDENT)
    }

    /// Echo sequence number (meaningful for echo request/reply).
    pub fn echo_seq_no(&self) -> u16 {
        bytes::get_u16(self.b(), field::ECHO_SEQNO)
    }

    /// Next-hop MTU (meaningful for destination unreachable, code 4, RFC 1191).
    pub fn next_hop_mtu(&self) -> u16 {
        bytes::get_u16(self.b(), field::MTU)
    }

    /// Everything after the header: echo data, or the invoking packet of an error.
    pub fn data(&self) -> &[u8] {
        bytes::slice(self.b(), field::DATA)
    }

    /// The invoking packet's leading bytes, for error messages (empty for other types).
    pub fn invoking_packet(&self) -> &[u8] {
        if self.msg_type().is_error() {
            self.data()
        } else {
            &[]
        }
    }

    /// True if the checksum over the whole message verifies.
    pub fn verify_checksum(&self) -> bool {
        checksum::data(self.b()) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn bm(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    pub fn set_msg_type(&mut self, m: Message) {
        bytes::set_u8(self.bm(), field::TYPE, m.into());
    }

    pub fn set_msg_code(&mut self, c: u8) {
        bytes::set_u8(self.bm(), field::CODE, c);
    }

    pub fn set_checksum(&mut self, v: u16) {
        bytes::set_u16(self.bm(), field::CHECKSUM, v);
    }

    pub fn set_rest_of_header(&mut self, v: u32) {
        bytes::set_u32(self.bm(), field::REST, v);
    }

    pub fn set_echo_ident(&mut self, v: u16) {
        bytes::set_u16(self.bm(), field::ECHO_IDENT, v);
    }

    pub fn set_echo_seq_no(&mut self, v: u16) {
        bytes::set_u16(self.bm(), field::ECHO_SEQNO, v);
    }

    pub fn set_next_hop_mtu(&mut self, v: u16) {
        bytes::set_u16(self.bm(), field::MTU, v);
    }

    pub fn data_mut(&mut self) -> &mut [u8] {
        bytes::slice_mut(self.bm(), field::DATA)
    }

    /// Computes the checksum over the whole message and writes it.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let ck = !checksum::data(self.b());
        self.set_checksum(ck);
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Packet<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// A parsed ICMP header; `data_len` is the length of what follows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Repr {
    EchoRequest {
        ident: u16,
        seq_no: u16,
        data_len: usize,
    },
    EchoReply {
        ident: u16,
        seq_no: u16,
        data_len: usize,
    },
    /// `next_hop_mtu` is the RFC 1191 field (0 unless code 4).
    DstUnreachable {
        code: u8,
        next_hop_mtu: u16,
        data_len: usize,
    },
    TimeExceeded {
        code: u8,
        data_len: usize,
    },
    /// Any other message, its rest-of-header kept as is.
    Other {
        msg_type: u8,
        code: u8,
        rest: u32,
        data_len: usize,
    },
}

impl Repr {
    /// Parses a checked message; `Checksum` if the checksum does not verify.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Repr> {
        packet.check_len()?;
        if !packet.verify_checksum() {
            return Err(Error::Checksum);
        }
        let data_len = packet.data().len();
        let code = packet.msg_code();
        Ok(match packet.msg_type() {
            Message::EchoRequest if code == 0 => Repr::EchoRequest {
                ident: packet.echo_ident(),
                seq_no: packet.echo_seq_no(),
                data_len,
            },
            Message::EchoReply if code == 0 => Repr::EchoReply {
                ident: packet.echo_ident(),
                seq_no: packet.echo_seq_no(),
                data_len,
            },
            Message::DstUnreachable => Repr::DstUnreachable {
                code,
                next_hop_mtu: packet.next_hop_mtu(),
                data_len,
            },
            Message::TimeExceeded => Repr::TimeExceeded { code, data_len },
            m => Repr::Other {
                msg_type: m.into(),
                code,
                rest: packet.rest_of_header(),
                data_len,
            },
        })
    }

    pub fn data_len(&self) -> usize {
        match *self {
            Repr::EchoRequest { data_len, .. }
            | Repr::EchoReply { data_len, .. }
            | Repr::DstUnreachable { data_len, .. }
            | Repr::TimeExceeded { data_len, .. }
            | Repr::Other { data_len, .. } => data_len,
        }
    }

    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    pub fn buffer_len(&self) -> usize {
        HEADER_LEN.saturating_add(self.data_len())
    }

    /// Writes the header with a zero checksum. Write the data, then call
    /// [`Packet::fill_checksum`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        let (msg, code, rest) = match *self {
            Repr::EchoRequest { ident, seq_no, .. } => (
                Message::EchoRequest,
                0,
                (u32::from(ident) << 16) | u32::from(seq_no),
            ),
            Repr::EchoReply { ident, seq_no, .. } => (
                Message::EchoReply,
                0,
                (u32::from(ident) << 16) | u32::from(seq_no),
            ),
            Repr::DstUnreachable {
                code, next_hop_mtu, ..
            } => (Message::DstUnreachable, code, u32::from(next_hop_mtu)),
            Repr::TimeExceeded { code, .. } => (Message::TimeExceeded, code, 0),
            Repr::Other {
                msg_type,
                code,
                rest,
                ..
            } => (Message::from(msg_type), code, rest),
        };
        packet.set_msg_type(msg);
        packet.set_msg_code(code);
        packet.set_checksum(0);
        packet.set_rest_of_header(rest);
    }
}

/// Whether an ICMP error may be sent about `invoking` (RFC 1812 4.3.2.7): it must be a valid
/// IPv4 packet, not an ICMP error itself, not a non-first fragment, from a unicast source and to
/// a unicast destination.
pub fn may_send_error(invoking: &[u8]) -> bool {
    let Ok(p) = ipv4::Packet::new_checked(invoking) else {
        return false;
    };
    let (src, dst) = (p.src_addr(), p.dst_addr());
    let bad = |a: Ipv4Addr| a.is_unspecified() || a.is_broadcast() || a.is_multicast();
    if p.version() != 4 || p.frag_offset() != 0 || bad(src) || src.is_loopback() || bad(dst) {
        return false;
    }
    if p.next_header() == IpProtocol::Icmp {
        let icmp = Packet::new_unchecked(p.payload());
        if icmp.check_len().is_err() || icmp.msg_type().is_error() {
            return false;
        }
    }
    true
}

/// Writes IPv4 header + ICMP header + `data` into `out`; `icmp_data_len` of `data` is used.
fn build(out: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr, repr: &Repr, data: &[u8]) -> Option<usize> {
    let icmp_len = repr.buffer_len();
    let total = ipv4::HEADER_LEN.checked_add(icmp_len)?;
    let out = out.get_mut(..total)?;
    let (ip, icmp) = out.split_at_mut_checked(ipv4::HEADER_LEN)?;
    ipv4::Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Icmp,
        payload_len: icmp_len,
        hop_limit: DEFAULT_TTL,
        dscp: 0,
        ecn: 0,
        ident: 0,
        dont_frag: false,
    }
    .emit(&mut ipv4::Packet::new_unchecked(ip));
    let mut p = Packet::new_unchecked(icmp);
    repr.emit(&mut p);
    p.data_mut().copy_from_slice(data.get(..repr.data_len())?);
    p.fill_checksum();
    Some(total)
}

/// An error about `invoking`, from `src` to the invoking packet's source, carrying as much of
/// the invoking packet as fits in 576 bytes (and in `out`, which must hold at least the IP and
/// ICMP headers plus the invoking header and 8 bytes). None if no error may be sent
/// ([`may_send_error`]) or `out` is too small.
fn build_error(
    out: &mut [u8],
    src: Ipv4Addr,
    invoking: &[u8],
    make: impl Fn(usize) -> Repr,
) -> Option<usize> {
    if !may_send_error(invoking) {
        return None;
    }
    let inv = ipv4::Packet::new_checked(invoking).ok()?;
    let dst = inv.src_addr();
    let inv_bytes = invoking.get(..usize::from(inv.total_len()))?;
    let min_quote = usize::from(inv.header_len())
        .saturating_add(8)
        .min(inv_bytes.len());
    let room = out
        .len()
        .min(ipv4::MIN_MTU)
        .checked_sub(ipv4::HEADER_LEN + HEADER_LEN)?;
    if room < min_quote {
        return None;
    }
    let quote = inv_bytes.get(..inv_bytes.len().min(room))?;
    build(out, src, dst, &make(quote.len()), quote)
}

/// "Fragmentation needed and DF set" (type 3 code 4) with next-hop MTU `mtu` about `invoking`
/// (an IPv4 packet), from `src`. Returns the length written to `out`; see [`build_error`] for
/// when it returns None.
pub fn build_frag_needed(
    out: &mut [u8],
    src: Ipv4Addr,
    invoking: &[u8],
    mtu: u16,
) -> Option<usize> {
    build_error(out, src, invoking, |data_len| Repr::DstUnreachable {
        code: CODE_FRAG_NEEDED,
        next_hop_mtu: mtu,
        data_len,
    })
}

/// "Host unreachable" (type 3 code 1, RFC 1812 4.3.3.1: the next hop never answered ARP)
/// about `invoking`, from `src`.
pub fn build_host_unreachable(out: &mut [u8], src: Ipv4Addr, invoking: &[u8]) -> Option<usize> {
    build_error(out, src, invoking, |data_len| Repr::DstUnreachable {
        code: CODE_HOST_UNREACHABLE,
        next_hop_mtu: 0,
        data_len,
    })
}

/// "TTL exceeded in transit" (type 11 code 0) about `invoking`, from `src`.
pub fn build_time_exceeded(out: &mut [u8], src: Ipv4Addr, invoking: &[u8]) -> Option<usize> {
    build_error(out, src, invoking, |data_len| Repr::TimeExceeded {
        code: CODE_TTL_EXCEEDED,
        data_len,
    })
}

/// An echo request from `src` to `dst`. Returns the length written, None if `out` is too small.
pub fn build_echo_request(
    out: &mut [u8],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ident: u16,
    seq_no: u16,
    data: &[u8],
) -> Option<usize> {
    let repr = Repr::EchoRequest {
        ident,
        seq_no,
        data_len: data.len(),
    };
    build(out, src, dst, &repr, data)
}

/// An echo reply from `src` to `dst`. Returns the length written, None if `out` is too small.
pub fn build_echo_reply(
    out: &mut [u8],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ident: u16,
    seq_no: u16,
    data: &[u8],
) -> Option<usize> {
    let repr = Repr::EchoReply {
        ident,
        seq_no,
        data_len: data.len(),
    };
    build(out, src, dst, &repr, data)
}

/// The reply to `request` (an IPv4 packet carrying a valid echo request): addresses swapped,
/// ident, sequence number and data echoed. None if `request` is not one, or `out` is too small.
pub fn answer_echo_request(out: &mut [u8], request: &[u8]) -> Option<usize> {
    let ip = ipv4::Packet::new_checked(request).ok()?;
    if ip.next_header() != IpProtocol::Icmp || ip.is_fragment() || !ip.verify_checksum() {
        return None;
    }
    let icmp = Packet::new_checked(ip.payload()).ok()?;
    match Repr::parse(&icmp).ok()? {
        Repr::EchoRequest { ident, seq_no, .. } => build_echo_reply(
            out,
            ip.dst_addr(),
            ip.src_addr(),
            ident,
            seq_no,
            icmp.data(),
        ),
        _ => None,
    }
}

#[cfg(test)]
#[allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]
mod tests {
    use super::*;
    use crate::wire::checksum::tests::Rng;
    use crate::wire::udp;

    const GW: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
    const HOST: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 20);
    const FAR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 5);

    fn udp_packet(len: usize) -> Vec<u8> {
        let r = ipv4::Repr {
            src_addr: HOST,
            dst_addr: FAR,
            next_header: IpProtocol::Udp,
            payload_len: len,
            hop_limit: 64,
            dscp: 0,
            ecn: 0,
            ident: 1,
            dont_frag: true,
        };
        let mut b = vec![0u8; r.buffer_len()];
        r.emit(&mut ipv4::Packet::new_unchecked(&mut b[..]));
        let mut u = udp::Packet::new_unchecked(&mut b[20..]);
        udp::Repr {
            src_port: 1000,
            dst_port: 2000,
            payload_len: len - 8,
        }
        .emit(&mut u);
        b
    }

    #[test]
    fn frag_needed_quotes_up_to_576() {
        let inv = udp_packet(1480);
        let mut out = vec![0u8; 2000];
        let n = build_frag_needed(&mut out, GW, &inv, 1400).unwrap();
        assert_eq!(n, 576);
        let ip = ipv4::Packet::new_checked(&out[..n]).unwrap();
        let r = ipv4::Repr::parse(&ip).unwrap();
        assert_eq!(
            (r.src_addr, r.dst_addr, r.next_header),
            (GW, HOST, IpProtocol::Icmp)
        );
        let icmp = Packet::new_checked(ip.payload()).unwrap();
        assert_eq!(
            Repr::parse(&icmp).unwrap(),
            Repr::DstUnreachable {
                code: 4,
                next_hop_mtu: 1400,
                data_len: 576 - 28
            }
        );
        assert_eq!(icmp.invoking_packet(), &inv[..548]);

        // a small invoking packet is quoted whole
        let inv = udp_packet(20);
        let n = build_frag_needed(&mut out, GW, &inv, 1400).unwrap();
        assert_eq!(n, 28 + inv.len());
        // a small output buffer limits the quote, down to header + 8 bytes
        let mut small = [0u8; 56];
        assert_eq!(
            build_frag_needed(&mut small, GW, &udp_packet(1000), 1400),
            Some(56)
        );
        let mut tiny = [0u8; 55];
        assert_eq!(
            build_frag_needed(&mut tiny, GW, &udp_packet(1000), 1400),
            None
        );
    }

    #[test]
    fn no_error_about_errors_fragments_broadcast() {
        let mut out = vec![0u8; 1000];
        let inv = udp_packet(100);
        let n = build_frag_needed(&mut out, GW, &inv, 1400).unwrap();
        // an error about an error
        assert!(!may_send_error(&out[..n]));
        // non-first fragment
        let mut f = udp_packet(100);
        let mut p = ipv4::Packet::new_unchecked(&mut f[..]);
        p.set_frag_offset(8);
        p.fill_checksum();
        assert!(!may_send_error(&f));
        // broadcast destination
        let mut f = udp_packet(100);
        ipv4::Packet::new_unchecked(&mut f[..]).set_dst_addr(Ipv4Addr::BROADCAST);
        assert!(!may_send_error(&f));
        // echo request is fine
        let n = build_echo_request(&mut out, HOST, FAR, 7, 9, b"ping").unwrap();
        assert!(may_send_error(&out[..n]));
        assert!(!may_send_error(&[0x45, 0, 0]));
    }

    #[test]
    fn echo_round_trip() {
        let mut req = vec![0u8; 100];
        let n = build_echo_request(&mut req, HOST, GW, 0x1234, 5, b"hello").unwrap();
        let mut rep = vec![0u8; 100];
        let m = answer_echo_request(&mut rep, &req[..n]).unwrap();
        let ip = ipv4::Packet::new_checked(&rep[..m]).unwrap();
        assert_eq!((ip.src_addr(), ip.dst_addr()), (GW, HOST));
        let icmp = Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum());
        assert_eq!(
            Repr::parse(&icmp).unwrap(),
            Repr::EchoReply {
                ident: 0x1234,
                seq_no: 5,
                data_len: 5
            }
        );
        assert_eq!(icmp.data(), b"hello");
        // a reply is not answered
        assert_eq!(answer_echo_request(&mut req, &rep[..m]), None);
        assert_eq!(build_echo_reply(&mut [0u8; 20], GW, HOST, 1, 1, b""), None);
    }

    #[test]
    fn repr_round_trip_and_checksum() {
        for r in [
            Repr::TimeExceeded {
                code: 1,
                data_len: 3,
            },
            Repr::Other {
                msg_type: 13,
                code: 0,
                rest: 0xdeadbeef,
                data_len: 0,
            },
        ] {
            let mut b = vec![0u8; r.buffer_len()];
            let mut p = Packet::new_unchecked(&mut b[..]);
            r.emit(&mut p);
            p.fill_checksum();
            assert_eq!(
                Repr::parse(&Packet::new_checked(&b[..]).unwrap()).unwrap(),
                r
            );
            b[0] ^= 0x80;
            assert_eq!(
                Repr::parse(&Packet::new_checked(&b[..]).unwrap()),
                Err(Error::Checksum)
            );
        }
    }

    #[test]
    fn truncated_and_garbage() {
        for n in 0..HEADER_LEN {
            assert_eq!(
                Packet::new_checked(&[0u8; 8][..n]).unwrap_err(),
                Error::Truncated
            );
        }
        let mut rng = Rng(21);
        let mut out = vec![0u8; 700];
        for _ in 0..3000 {
            let n = rng.below(100);
            let g = rng.bytes(n);
            if let Ok(p) = Packet::new_checked(&g[..]) {
                let _ = (
                    Repr::parse(&p),
                    p.invoking_packet(),
                    p.next_hop_mtu(),
                    p.echo_ident(),
                );
            }
            let _ = build_frag_needed(&mut out, GW, &g, 1400);
            let _ = answer_echo_request(&mut out, &g);
        }
    }
}
