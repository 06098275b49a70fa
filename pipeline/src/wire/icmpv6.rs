//! ICMPv6 (RFC 4443): the message view, a `Repr`, and builders for the messages the gateway
//! originates (echo, "packet too big", "time exceeded").
//!
//! A view covers exactly one ICMPv6 message; its checksum covers the IPv6 pseudo-header and the
//! whole message. Builders write a whole IPv6 packet (header + ICMPv6) into a caller's buffer
//! and return its length; an error message carries as much of the invoking packet as fits in
//! [`ipv6::MIN_MTU`] (1280) bytes (RFC 4443 2.4 (c)).

use core::net::{IpAddr, Ipv6Addr};

use super::bytes::{self, Field, Rest};
use super::{checksum, ipv6, Error, IpProtocol, Result};

/// Length of the ICMPv6 header (type, code, checksum, 4 bytes of message body).
pub const HEADER_LEN: usize = 8;
/// Hop limit of the packets the builders write.
pub const DEFAULT_HOP_LIMIT: u8 = 64;
/// Time exceeded code "hop limit exceeded in transit".
pub const CODE_HOP_LIMIT_EXCEEDED: u8 = 0;
/// Destination unreachable, code 3: address unreachable.
pub const CODE_ADDRESS_UNREACHABLE: u8 = 3;

mod field {
    use super::{Field, Rest};
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Field = 2..4;
    pub const REST: Field = 4..8;
    pub const ECHO_IDENT: Field = 4..6;
    pub const ECHO_SEQNO: Field = 6..8;
    pub const MTU: Field = 4..8;
    pub const DATA: Rest = 8..;
}

/// ICMPv6 message types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Message {
    DstUnreachable,
    PacketTooBig,
    TimeExceeded,
    ParamProblem,
    EchoRequest,
    EchoReply,
    /// Neighbour solicitation and advertisement (RFC 4861 4.3, 4.4).
    NeighborSolicit,
    NeighborAdvert,
    Unknown(u8),
}

impl Message {
    /// Error messages are types 0..=127 (RFC 4443 2.1).
    pub fn is_error(self) -> bool {
        u8::from(self) < 128
    }
}

impl From<u8> for Message {
    fn from(v: u8) -> Self {
        match v {
            1 => Message::DstUnreachable,
            2 => Message::PacketTooBig,
            3 => Message::TimeExceeded,
            4 => Message::ParamProblem,
            128 => Message::EchoRequest,
            129 => Message::EchoReply,
            135 => Message::NeighborSolicit,
            136 => Message::NeighborAdvert,
            other => Message::Unknown(other),
        }
    }
}

impl From<Message> for u8 {
    fn from(m: Message) -> u8 {
        match m {
            Message::DstUnreachable => 1,
            Message::PacketTooBig => 2,
            Message::TimeExceeded => 3,
            Message::ParamProblem => 4,
            Message::EchoRequest => 128,
            Message::EchoReply => 129,
            Message::NeighborSolicit => 135,
            Message::NeighborAdvert => 136,
            Message::Unknown(v) => v,
        }
    }
}

/// A view of an ICMPv6 message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

fn sum(src: &Ipv6Addr, dst: &Ipv6Addr, msg: &[u8]) -> u16 {
    let len = u32::try_from(msg.len()).unwrap_or(u32::MAX);
    checksum::combine(&[
        checksum::pseudo_header(
            &IpAddr::V6(*src),
            &IpAddr::V6(*dst),
            IpProtocol::Icmpv6,
            len,
        ),
        checksum::data(msg),
    ])
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

    pub fn echo_ident(&self) -> u16 {
        bytes::get_u16(self.b(), field::ECHO_IDENT)
    }

    pub fn echo_seq_no(&self) -> u16 {
        bytes::get_u16(self.b(), field::ECHO_SEQNO)
    }

    /// The MTU of a packet too big message.
    pub fn mtu(&self) -> u32 {
        bytes::get_u32(self.b(), field::MTU)
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

    /// True if the checksum over the pseudo-header and the whole message verifies.
    pub fn verify_checksum(&self, src: &Ipv6Addr, dst: &Ipv6Addr) -> bool {
        sum(src, dst, self.b()) == 0xffff
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

    pub fn set_mtu(&mut self, v: u32) {
        bytes::set_u32(self.bm(), field::MTU, v);
    }

    pub fn data_mut(&mut self) -> &mut [u8] {
        bytes::slice_mut(self.bm(), field::DATA)
    }

    /// Computes the checksum over the pseudo-header and the whole message and writes it.
    pub fn fill_checksum(&mut self, src: &Ipv6Addr, dst: &Ipv6Addr) {
        self.set_checksum(0);
        let ck = !sum(src, dst, self.b());
        self.set_checksum(ck);
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Packet<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// A parsed ICMPv6 header; `data_len` is the length of what follows it.
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
    DstUnreachable {
        code: u8,
        data_len: usize,
    },
    PacketTooBig {
        mtu: u32,
        data_len: usize,
    },
    TimeExceeded {
        code: u8,
        data_len: usize,
    },
    /// Any other message (parameter problem, neighbour discovery, ...), body kept as is.
    Other {
        msg_type: u8,
        code: u8,
        rest: u32,
        data_len: usize,
    },
}

impl Repr {
    /// Parses a checked message; `Checksum` if the checksum does not verify with these
    /// addresses.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(
        packet: &Packet<&T>,
        src: &Ipv6Addr,
        dst: &Ipv6Addr,
    ) -> Result<Repr> {
        packet.check_len()?;
        if !packet.verify_checksum(src, dst) {
            return Err(Error::Checksum);
        }
        Ok(Self::parse_unverified(packet))
    }

    /// Parses a message without looking at its checksum (for the quoted headers of errors).
    pub fn parse_unverified<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Repr {
        let data_len = packet.data().len();
        let code = packet.msg_code();
        match packet.msg_type() {
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
            Message::DstUnreachable => Repr::DstUnreachable { code, data_len },
            Message::PacketTooBig if code == 0 => Repr::PacketTooBig {
                mtu: packet.mtu(),
                data_len,
            },
            Message::TimeExceeded => Repr::TimeExceeded { code, data_len },
            m => Repr::Other {
                msg_type: m.into(),
                code,
                rest: packet.rest_of_header(),
                data_len,
            },
        }
    }

    pub fn data_len(&self) -> usize {
        match *self {
            Repr::EchoRequest { data_len, .. }
            | Repr::EchoReply { data_len, .. }
            | Repr::DstUnreachable { data_len, .. }
            | Repr::PacketTooBig { data_len, .. }
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
            Repr::DstUnreachable { code, .. } => (Message::DstUnreachable, code, 0),
            Repr::PacketTooBig { mtu, .. } => (Message::PacketTooBig, 0, mtu),
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

/// Whether an ICMPv6 error of type `msg` may be sent about `invoking` (RFC 4443 2.4 (e)): it
/// must be a valid IPv6 packet, not an ICMPv6 error itself, from a unicast (specified) source,
/// and not to a multicast destination unless `msg` is Packet Too Big.
pub fn may_send_error(invoking: &[u8], msg: Message) -> bool {
    let Ok(p) = ipv6::Packet::new_checked(invoking) else {
        return false;
    };
    let (src, dst) = (p.src_addr(), p.dst_addr());
    if p.version() != 6 || src.is_unspecified() || src.is_multicast() || src.is_loopback() {
        return false;
    }
    if dst.is_multicast() && msg != Message::PacketTooBig {
        return false;
    }
    if let Ok(u) = ipv6::upper_layer(&p) {
        if u.protocol == IpProtocol::Icmpv6 && u.fragment_offset == 0 {
            let icmp = Packet::new_unchecked(invoking.get(u.offset..).unwrap_or(&[]));
            if icmp.check_len().is_err() || icmp.msg_type().is_error() {
                return false;
            }
        }
    }
    true
}

fn build(out: &mut [u8], src: Ipv6Addr, dst: Ipv6Addr, repr: &Repr, data: &[u8]) -> Option<usize> {
    let icmp_len = repr.buffer_len();
    let total = ipv6::HEADER_LEN.checked_add(icmp_len)?;
    let out = out.get_mut(..total)?;
    let (ip, icmp) = out.split_at_mut_checked(ipv6::HEADER_LEN)?;
    ipv6::Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Icmpv6,
        payload_len: icmp_len,
        hop_limit: DEFAULT_HOP_LIMIT,
        dscp: 0,
        ecn: 0,
        flow_label: 0,
    }
    .emit(&mut ipv6::Packet::new_unchecked(ip));
    let mut p = Packet::new_unchecked(icmp);
    repr.emit(&mut p);
    p.data_mut().copy_from_slice(data.get(..repr.data_len())?);
    p.fill_checksum(&src, &dst);
    Some(total)
}

/// An error about `invoking`, from `src` to the invoking packet's source, carrying as much of
/// the invoking packet as fits in 1280 bytes and in `out` (which must hold at least the headers
/// and the invoking fixed header). None if no error may be sent ([`may_send_error`]) or `out` is
/// too small.
fn build_error(
    out: &mut [u8],
    src: Ipv6Addr,
    invoking: &[u8],
    msg: Message,
    make: impl Fn(usize) -> Repr,
) -> Option<usize> {
    if !may_send_error(invoking, msg) {
        return None;
    }
    let inv = ipv6::Packet::new_checked(invoking).ok()?;
    let dst = inv.src_addr();
    let inv_bytes = invoking.get(..inv.total_len())?;
    let room = out
        .len()
        .min(ipv6::MIN_MTU)
        .checked_sub(ipv6::HEADER_LEN + HEADER_LEN)?;
    if room < ipv6::HEADER_LEN.min(inv_bytes.len()) {
        return None;
    }
    let quote = inv_bytes.get(..inv_bytes.len().min(room))?;
    build(out, src, dst, &make(quote.len()), quote)
}

/// "Packet too big" (type 2) with `mtu` about `invoking` (an IPv6 packet), from `src`.
/// Returns the length written to `out`; None if no error may be sent or `out` is too small.
pub fn build_packet_too_big(
    out: &mut [u8],
    src: Ipv6Addr,
    invoking: &[u8],
    mtu: u32,
) -> Option<usize> {
    build_error(out, src, invoking, Message::PacketTooBig, |data_len| {
        Repr::PacketTooBig { mtu, data_len }
    })
}

/// "Address unreachable" (type 1 code 3, RFC 4443 3.1: neighbour discovery for the next hop
/// failed) about `invoking`, from `src`.
pub fn build_address_unreachable(out: &mut [u8], src: Ipv6Addr, invoking: &[u8]) -> Option<usize> {
    build_error(out, src, invoking, Message::DstUnreachable, |data_len| {
        Repr::DstUnreachable {
            code: CODE_ADDRESS_UNREACHABLE,
            data_len,
        }
    })
}

/// "Hop limit exceeded in transit" (type 3 code 0) about `invoking`, from `src`.
pub fn build_time_exceeded(out: &mut [u8], src: Ipv6Addr, invoking: &[u8]) -> Option<usize> {
    build_error(out, src, invoking, Message::TimeExceeded, |data_len| {
        Repr::TimeExceeded {
            code: CODE_HOP_LIMIT_EXCEEDED,
            data_len,
        }
    })
}

/// An echo request from `src` to `dst`. Returns the length written, None if `out` is too small.
pub fn build_echo_request(
    out: &mut [u8],
    src: Ipv6Addr,
    dst: Ipv6Addr,
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
    src: Ipv6Addr,
    dst: Ipv6Addr,
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

/// The reply to `request` (an IPv6 packet carrying a valid echo request, extension headers
/// allowed, not fragmented), from the address it was sent to. None if `request` is not one, or
/// `out` is too small.
pub fn answer_echo_request(out: &mut [u8], request: &[u8]) -> Option<usize> {
    let ip = ipv6::Packet::new_checked(request).ok()?;
    let u = ipv6::upper_layer(&ip).ok()?;
    if u.protocol != IpProtocol::Icmpv6 || u.fragmented || ip.dst_addr().is_multicast() {
        return None;
    }
    let msg = request.get(u.offset..ip.total_len())?;
    let icmp = Packet::new_checked(msg).ok()?;
    match Repr::parse(&icmp, &ip.src_addr(), &ip.dst_addr()).ok()? {
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

    fn a(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    fn udp_packet(dst: Ipv6Addr, payload_len: usize) -> Vec<u8> {
        let r = ipv6::Repr {
            src_addr: a("2001:db8:1::20"),
            dst_addr: dst,
            next_header: IpProtocol::Udp,
            payload_len,
            hop_limit: 64,
            dscp: 0,
            ecn: 0,
            flow_label: 0,
        };
        let mut b = vec![0u8; r.buffer_len()];
        r.emit(&mut ipv6::Packet::new_unchecked(&mut b[..]));
        b
    }

    #[test]
    fn packet_too_big_quotes_up_to_1280() {
        let gw = a("2001:db8:1::1");
        let inv = udp_packet(a("2001:db8:2::5"), 1460);
        let mut out = vec![0u8; 2000];
        let n = build_packet_too_big(&mut out, gw, &inv, 1400).unwrap();
        assert_eq!(n, 1280);
        let ip = ipv6::Packet::new_checked(&out[..n]).unwrap();
        assert_eq!(ip.dst_addr(), a("2001:db8:1::20"));
        assert_eq!(ip.next_header(), IpProtocol::Icmpv6);
        let icmp = Packet::new_checked(ip.payload()).unwrap();
        assert_eq!(
            Repr::parse(&icmp, &ip.src_addr(), &ip.dst_addr()).unwrap(),
            Repr::PacketTooBig {
                mtu: 1400,
                data_len: 1280 - 48
            }
        );
        assert_eq!(icmp.invoking_packet(), &inv[..1232]);
        // not an error about an error
        assert!(!may_send_error(&out[..n], Message::PacketTooBig));
        // multicast destination: only packet too big
        let m = udp_packet(a("ff02::1"), 100);
        assert!(may_send_error(&m, Message::PacketTooBig));
        assert!(!may_send_error(&m, Message::TimeExceeded));
        assert_eq!(build_time_exceeded(&mut out, gw, &m), None);
        // small invoking packet quoted whole
        let inv = udp_packet(a("2001:db8:2::5"), 10);
        assert_eq!(
            build_packet_too_big(&mut out, gw, &inv, 1280),
            Some(48 + 50)
        );
        assert_eq!(build_packet_too_big(&mut [0u8; 87], gw, &inv, 1280), None);
        assert_eq!(
            build_packet_too_big(&mut [0u8; 88], gw, &inv, 1280),
            Some(88)
        );
    }

    #[test]
    fn echo_round_trip() {
        let h = a("2001:db8:1::20");
        let gw = a("2001:db8:1::1");
        let mut req = vec![0u8; 200];
        let n = build_echo_request(&mut req, h, gw, 77, 3, b"abc").unwrap();
        let mut rep = vec![0u8; 200];
        let m = answer_echo_request(&mut rep, &req[..n]).unwrap();
        let ip = ipv6::Packet::new_checked(&rep[..m]).unwrap();
        assert_eq!((ip.src_addr(), ip.dst_addr()), (gw, h));
        let icmp = Packet::new_checked(ip.payload()).unwrap();
        assert_eq!(
            Repr::parse(&icmp, &gw, &h).unwrap(),
            Repr::EchoReply {
                ident: 77,
                seq_no: 3,
                data_len: 3
            }
        );
        // other addresses fail the checksum
        assert_eq!(
            Repr::parse(&icmp, &gw, &a("2001:db8:1::21")),
            Err(Error::Checksum)
        );
        assert_eq!(answer_echo_request(&mut req, &rep[..m]), None);
    }

    #[test]
    fn truncated_and_garbage() {
        for n in 0..HEADER_LEN {
            assert_eq!(
                Packet::new_checked(&[0u8; 8][..n]).unwrap_err(),
                Error::Truncated
            );
        }
        let mut rng = Rng(31);
        let mut out = vec![0u8; 1500];
        let s = a("::1");
        for _ in 0..3000 {
            let n = rng.below(120);
            let mut g = rng.bytes(n);
            if n >= 6 && rng.below(2) == 0 {
                g[0] = 0x60;
                let pl = n.saturating_sub(40) as u16;
                g[4..6].copy_from_slice(&pl.to_be_bytes());
            }
            if let Ok(p) = Packet::new_checked(&g[..]) {
                let _ = (Repr::parse(&p, &s, &s), p.invoking_packet(), p.mtu());
            }
            let _ = build_packet_too_big(&mut out, s, &g, 1280);
            let _ = answer_echo_request(&mut out, &g);
        }
    }
}
