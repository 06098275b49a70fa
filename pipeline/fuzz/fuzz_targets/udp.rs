#![no_main]
//! UDP: accessors, checksums over v4 and v6 pseudo-headers, Repr.
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use libfuzzer_sys::fuzz_target;
use pipeline::wire::udp::{Packet, Repr};

fuzz_target!(|data: &[u8]| {
    let v4 = (
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
    );
    let v6 = (
        IpAddr::V6(Ipv6Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    );
    let u = Packet::new_unchecked(data);
    let _ = (u.payload(), u.datagram(), u.verify_checksum(&v4.0, &v4.1));
    let Ok(p) = Packet::new_checked(data) else {
        return;
    };
    let _ = (
        p.src_port(),
        p.dst_port(),
        p.len(),
        p.is_empty(),
        p.checksum(),
        p.payload(),
    );
    let _ = (
        p.verify_checksum(&v4.0, &v4.1),
        p.verify_checksum(&v6.0, &v6.1),
    );
    let _ = p.verify_checksum(&v4.0, &v6.1);
    let _ = Repr::parse(&p);
    let mut buf = data.to_vec();
    let mut m = Packet::new_unchecked(&mut buf[..]);
    for (s, d) in [v4, v6] {
        m.fill_checksum(&s, &d);
        assert!(m.verify_checksum(&s, &d), "filled checksum verifies");
    }
    let _ = m.payload_mut();
});
