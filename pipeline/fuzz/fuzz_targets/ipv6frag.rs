#![no_main]
//! IPv6 Fragment header: accessors, Repr round trip, and `locate` on any packet.
use libfuzzer_sys::fuzz_target;
use pipeline::wire::ipv6;
use pipeline::wire::ipv6frag::{self, Header, Repr};

fuzz_target!(|data: &[u8]| {
    let u = Header::new_unchecked(data);
    let _ = (u.next_header(), u.frag_offset(), u.more_frags(), u.ident());
    if let Ok(h) = Header::new_checked(data) {
        let r = Repr::parse(&h).expect("a checked header parses");
        assert_eq!(r.frag_offset % 8, 0);
        let mut buf = [0u8; ipv6frag::HEADER_LEN];
        r.emit(&mut Header::new_unchecked(&mut buf[..]));
        let q = Header::new_checked(&buf[..]).expect("emitted header checks");
        assert_eq!(Repr::parse(&q), Ok(r), "Repr round trip");
    }
    let p = ipv6::Packet::new_unchecked(data);
    let _ = ipv6frag::locate(&p);
    if let Ok(p) = ipv6::Packet::new_checked(data) {
        if let Ok(Some(l)) = ipv6frag::locate(&p) {
            assert!(l.next_header_at < l.header_at);
            assert!(l.data_at() <= p.total_len());
            assert_eq!(data[l.next_header_at], 44);
            let h = Header::new_checked(&data[l.header_at..]).expect("header within the packet");
            let _ = Repr::parse(&h);
        }
    }
});
