#![no_main]
//! ESP: header view and Repr; the input's tail as a decrypted plaintext; trailer round trip.
use libfuzzer_sys::fuzz_target;
use pipeline::wire::esp::{self, Packet, Repr, Trailer};
use pipeline::wire::IpProtocol;

fuzz_target!(|data: &[u8]| {
    let u = Packet::new_unchecked(data);
    let _ = (u.spi(), u.seq_number(), u.payload());
    if let Ok(p) = Packet::new_checked(data) {
        let _ = (p.spi(), p.seq_number(), p.payload());
        if let Ok(r) = Repr::parse(&p) {
            let mut buf = data.to_vec();
            r.emit(&mut Packet::new_unchecked(&mut buf[..]));
            assert_eq!(buf, data);
        }
    }
    if let Ok((inner, t)) = Trailer::parse(data) {
        assert_eq!(inner + t.len(), data.len());
        assert_eq!(esp::parse_trailer(data), Ok((inner, t.next_header)));
    }
    // append a trailer to the input and parse it back
    let align = 4usize << (data.first().copied().unwrap_or(0) % 7);
    let nh = IpProtocol::from(data.get(1).copied().unwrap_or(4));
    if let Ok(t) = Trailer::for_payload(data.len(), align, nh) {
        let mut v = data.to_vec();
        t.append_to_vec(&mut v);
        assert_eq!(v.len() % align, 0);
        assert_eq!(Trailer::parse(&v), Ok((data.len(), t)));
    }
});
