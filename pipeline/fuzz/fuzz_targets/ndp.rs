#![no_main]
//! Neighbor Solicitation / Advertisement: accessors, option walk, Repr round trip, and what
//! the neighbour layer reads from a frame.
use core::net::Ipv6Addr;
use libfuzzer_sys::fuzz_target;
use pipeline::neighbor::frames;
use pipeline::wire::icmpv6;
use pipeline::wire::ndp::{Message, Repr};

fuzz_target!(|data: &[u8]| {
    let a = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
    let b = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 1);
    let u = Message::new_unchecked(data);
    let _ = (u.flags(), u.target_addr(), u.lladdr_option(1), u.lladdr_option(2));
    if let Ok(m) = Message::new_checked(data) {
        // with the checksum made right, whatever parses must emit the same message back
        let mut fixed = data.to_vec();
        icmpv6::Packet::new_unchecked(&mut fixed[..]).fill_checksum(&a, &b);
        let m2 = Message::new_checked(&fixed[..]).expect("same lengths");
        if let Ok(r) = Repr::parse(&m2, &a, &b) {
            let mut buf = vec![0u8; r.buffer_len()];
            r.emit(&mut Message::new_unchecked(&mut buf[..]));
            icmpv6::Packet::new_unchecked(&mut buf[..]).fill_checksum(&a, &b);
            let back = Message::new_checked(&buf[..]).expect("emitted message checks");
            assert_eq!(Repr::parse(&back, &a, &b), Ok(r), "Repr round trip");
        }
        let _ = Repr::parse(&m, &a, &b);
    }
    if let Some(h) = frames::nd_hint(data, &[a]) {
        assert!(!h.addr.is_multicast());
    }
});
