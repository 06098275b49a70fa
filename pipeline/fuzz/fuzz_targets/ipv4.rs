#![no_main]
//! IPv4: accessors, checksum, Repr, IpRepr; setters on the checked view.
use libfuzzer_sys::fuzz_target;
use pipeline::wire::ipv4::{Packet, Repr};
use pipeline::wire::IpRepr;

fuzz_target!(|data: &[u8]| {
    let u = Packet::new_unchecked(data);
    let _ = (u.payload(), u.options(), u.header(), u.verify_checksum());
    let _ = IpRepr::parse(data);
    let Ok(p) = Packet::new_checked(data) else {
        return;
    };
    let _ = (
        p.version(),
        p.header_len(),
        p.dscp(),
        p.ecn(),
        p.total_len(),
        p.ident(),
    );
    let _ = (
        p.dont_frag(),
        p.more_frags(),
        p.frag_offset(),
        p.is_fragment(),
        p.hop_limit(),
    );
    let _ = (
        p.next_header(),
        p.checksum(),
        p.src_addr(),
        p.dst_addr(),
        p.options(),
        p.header(),
    );
    assert!(usize::from(p.header_len()) + p.payload().len() <= data.len());
    let _ = p.verify_checksum();
    if let Ok(r) = Repr::parse(&p) {
        let mut buf = vec![0u8; r.buffer_len()];
        r.emit(&mut Packet::new_unchecked(&mut buf[..]));
        let q = Packet::new_checked(&buf[..]).expect("emitted header checks");
        assert_eq!(Repr::parse(&q), Ok(r), "Repr round trip");
    }
    let mut buf = data.to_vec();
    let mut m = Packet::new_unchecked(&mut buf[..]);
    m.set_hop_limit(m.hop_limit().wrapping_sub(1));
    m.set_ecn(3);
    m.fill_checksum();
    assert!(m.verify_checksum());
    let _ = m.payload_mut();
    let _ = m.header_and_payload_mut();
});
