#![no_main]
//! IPv6: accessors, Repr round trip, extension-header walk.
use libfuzzer_sys::fuzz_target;
use pipeline::wire::ipv6::{self, Packet, Repr};
use pipeline::wire::IpProtocol;

fuzz_target!(|data: &[u8]| {
    let u = Packet::new_unchecked(data);
    let _ = (
        u.payload(),
        u.flow_label(),
        u.src_addr(),
        ipv6::upper_layer(&u),
    );
    // the walk on its own, from any first header
    if let Some((&first, rest)) = data.split_first() {
        if let Ok(w) = ipv6::walk_ext_headers(IpProtocol::from(first), rest) {
            assert!(w.offset <= rest.len());
        }
    }
    let Ok(p) = Packet::new_checked(data) else {
        return;
    };
    let _ = (
        p.version(),
        p.traffic_class(),
        p.dscp(),
        p.ecn(),
        p.flow_label(),
    );
    let _ = (
        p.payload_len(),
        p.next_header(),
        p.hop_limit(),
        p.src_addr(),
        p.dst_addr(),
    );
    assert!(p.total_len() <= data.len());
    let _ = p.payload();
    if let Ok(up) = ipv6::upper_layer(&p) {
        assert!(up.offset <= p.total_len());
        assert!(up.offset >= ipv6::HEADER_LEN);
    }
    if let Ok(r) = Repr::parse(&p) {
        let mut buf = vec![0u8; r.buffer_len()];
        r.emit(&mut Packet::new_unchecked(&mut buf[..]));
        let q = Packet::new_checked(&buf[..]).expect("emitted header checks");
        assert_eq!(Repr::parse(&q), Ok(r), "Repr round trip");
    }
    let mut buf = data.to_vec();
    let mut m = Packet::new_unchecked(&mut buf[..]);
    m.set_ecn(1);
    let _ = m.payload_mut();
});
