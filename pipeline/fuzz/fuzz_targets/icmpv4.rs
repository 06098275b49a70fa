#![no_main]
//! ICMPv4: accessors, Repr, and the builders fed the input as an invoking packet.
use core::net::Ipv4Addr;
use libfuzzer_sys::fuzz_target;
use pipeline::wire::icmpv4::{self, Packet, Repr};
use pipeline::wire::ipv4;

fuzz_target!(|data: &[u8]| {
    let gw = Ipv4Addr::new(192, 168, 1, 1);
    let u = Packet::new_unchecked(data);
    let _ = (
        u.data(),
        u.invoking_packet(),
        u.next_hop_mtu(),
        u.verify_checksum(),
    );
    if let Ok(p) = Packet::new_checked(data) {
        let _ = (p.msg_type(), p.msg_code(), p.checksum(), p.rest_of_header());
        let _ = (p.echo_ident(), p.echo_seq_no(), p.next_hop_mtu(), p.data());
        let _ = (p.invoking_packet(), p.verify_checksum());
        if let Ok(r) = Repr::parse(&p) {
            let mut buf = data.to_vec();
            let mut m = Packet::new_unchecked(&mut buf[..]);
            r.emit(&mut m);
            m.fill_checksum();
            let q = Packet::new_checked(&buf[..]).expect("checks");
            assert_eq!(Repr::parse(&q), Ok(r), "Repr round trip");
        }
    }
    // the input as an IPv4 packet the gateway might answer
    let mut out = [0u8; 700];
    let _ = icmpv4::may_send_error(data);
    for n in [
        icmpv4::build_frag_needed(&mut out, gw, data, 1400),
        icmpv4::build_time_exceeded(&mut out, gw, data),
        icmpv4::answer_echo_request(&mut out, data),
    ]
    .into_iter()
    .flatten()
    {
        assert!(n <= ipv4::MIN_MTU.max(28 + data.len()));
        let ip = ipv4::Packet::new_checked(&out[..n]).expect("built packet checks");
        assert!(ipv4::Repr::parse(&ip).is_ok());
        assert!(Packet::new_checked(ip.payload())
            .expect("icmp")
            .verify_checksum());
    }
});
