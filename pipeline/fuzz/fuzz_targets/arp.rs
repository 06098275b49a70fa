#![no_main]
//! ARP: accessors, Repr round trip, and what the neighbour layer reads from a frame.
use core::net::Ipv4Addr;
use libfuzzer_sys::fuzz_target;
use pipeline::neighbor::frames;
use pipeline::wire::arp::{Packet, Repr, PACKET_LEN};

fuzz_target!(|data: &[u8]| {
    let u = Packet::new_unchecked(data);
    let _ = (u.operation(), u.source_protocol_addr(), u.target_hardware_addr());
    if let Ok(p) = Packet::new_checked(data) {
        if let Ok(r) = Repr::parse(&p) {
            let mut buf = [0u8; PACKET_LEN];
            r.emit(&mut Packet::new_unchecked(&mut buf[..]));
            assert_eq!(&buf[..], &data[..PACKET_LEN], "Repr round trip");
        }
    }
    let ours = Ipv4Addr::new(10, 1, 0, 1);
    if let Some(h) = frames::arp_hint(data, [2, 0, 0, 0, 0, 1], Some(ours)) {
        assert_ne!(h.addr, ours);
        assert!(h.mac.is_some_and(|m| m[0] & 1 == 0));
    }
});
