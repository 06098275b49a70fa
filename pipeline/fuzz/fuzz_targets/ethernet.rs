#![no_main]
//! Ethernet: accessors, Repr round trip.
use libfuzzer_sys::fuzz_target;
use pipeline::wire::ethernet::{Frame, Repr};

fuzz_target!(|data: &[u8]| {
    let u = Frame::new_unchecked(data);
    let _ = (u.dst_addr(), u.src_addr(), u.ethertype(), u.payload());
    let Ok(f) = Frame::new_checked(data) else {
        return;
    };
    let _ = (f.dst_addr(), f.src_addr(), f.ethertype(), f.payload());
    let r = Repr::parse(&f).expect("checked frame parses");
    let mut buf = data.to_vec();
    r.emit(&mut Frame::new_unchecked(&mut buf[..]));
    assert_eq!(buf, data, "emit of a parsed header reproduces it");
    let mut m = Frame::new_unchecked(&mut buf[..]);
    let _ = m.payload_mut();
});
