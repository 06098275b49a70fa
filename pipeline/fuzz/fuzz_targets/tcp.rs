#![no_main]
//! TCP: accessors, checksums, Repr.
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use libfuzzer_sys::fuzz_target;
use pipeline::wire::tcp::{Packet, Repr};

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
    let _ = (u.payload(), u.options(), u.flags());
    let Ok(p) = Packet::new_checked(data) else {
        return;
    };
    let _ = (
        p.src_port(),
        p.dst_port(),
        p.seq_number(),
        p.ack_number(),
        p.header_len(),
    );
    let _ = (
        p.flags(),
        p.syn(),
        p.ack(),
        p.fin(),
        p.rst(),
        p.window_len(),
        p.urgent_at(),
    );
    let _ = (p.checksum(), p.options(), p.payload());
    let _ = (
        p.verify_checksum(&v4.0, &v4.1),
        p.verify_checksum(&v6.0, &v6.1),
    );
    if let Ok(r) = Repr::parse(&p) {
        let mut buf = vec![0u8; r.buffer_len()];
        let mut m = Packet::new_unchecked(&mut buf[..]);
        r.emit(&mut m);
        m.fill_checksum(&v4.0, &v4.1);
        let q = Packet::new_checked(&buf[..]).expect("emitted header checks");
        assert!(q.verify_checksum(&v4.0, &v4.1));
        assert_eq!(
            Repr::parse(&q).map(|x| (x.src_port, x.flags)),
            Ok((r.src_port, r.flags))
        );
    }
    let mut buf = data.to_vec();
    let mut m = Packet::new_unchecked(&mut buf[..]);
    m.fill_checksum(&v6.0, &v6.1);
    assert!(m.verify_checksum(&v6.0, &v6.1));
    let _ = m.payload_mut();
});
