#![no_main]
//! ICMPv6: accessors, Repr, and the builders fed the input as an invoking packet.
use core::net::Ipv6Addr;
use libfuzzer_sys::fuzz_target;
use pipeline::wire::icmpv6::{self, Message, Packet, Repr};
use pipeline::wire::ipv6;

fuzz_target!(|data: &[u8]| {
    let gw: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
    let any = Ipv6Addr::UNSPECIFIED;
    let u = Packet::new_unchecked(data);
    let _ = (
        u.data(),
        u.invoking_packet(),
        u.mtu(),
        u.verify_checksum(&gw, &any),
    );
    if let Ok(p) = Packet::new_checked(data) {
        let _ = (p.msg_type(), p.msg_code(), p.checksum(), p.rest_of_header());
        let _ = (
            p.echo_ident(),
            p.echo_seq_no(),
            p.mtu(),
            p.data(),
            p.invoking_packet(),
        );
        let _ = Repr::parse(&p, &gw, &any);
        let r = Repr::parse_unverified(&p);
        let mut buf = data.to_vec();
        let mut m = Packet::new_unchecked(&mut buf[..]);
        r.emit(&mut m);
        m.fill_checksum(&gw, &any);
        let q = Packet::new_checked(&buf[..]).expect("checks");
        assert_eq!(Repr::parse(&q, &gw, &any), Ok(r), "Repr round trip");
    }
    let mut out = [0u8; 1500];
    let _ = icmpv6::may_send_error(data, Message::PacketTooBig);
    for n in [
        icmpv6::build_packet_too_big(&mut out, gw, data, 1280),
        icmpv6::build_time_exceeded(&mut out, gw, data),
        icmpv6::answer_echo_request(&mut out, data),
    ]
    .into_iter()
    .flatten()
    {
        assert!(n <= ipv6::MIN_MTU.max(48 + data.len()));
        let ip = ipv6::Packet::new_checked(&out[..n]).expect("built packet checks");
        let icmp = Packet::new_checked(ip.payload()).expect("icmp");
        assert!(icmp.verify_checksum(&ip.src_addr(), &ip.dst_addr()));
    }
});
