//! G-IKEv2 payload bodies (RFC 9838: GSA, KD, IDg, wrapped keys) from anyone, and the same
//! bytes as a whole IKE message whose group payloads are then parsed. Nothing may panic, and
//! whatever parses emits bytes that parse to the same value (one accepted form only).
#![no_main]

use ike::group::wire::{parse_idg, GroupPayload, Gsa, Kd, WrappedKey};
use ike::wire::{parse_chain, Header, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = Gsa::parse(data) {
        let mut e = Vec::new();
        g.emit(&mut e);
        assert_eq!(Gsa::parse(&e).ok(), Some(g));
    }
    if let Ok(k) = Kd::parse(data) {
        let mut e = Vec::new();
        k.emit(&mut e);
        assert_eq!(Kd::parse(&e).ok(), Some(k));
    }
    let _ = parse_idg(data);
    let _ = WrappedKey::parse(data);
    if let Ok(h) = Header::parse(data) {
        if let Ok(c) = parse_chain(data, HEADER_LEN, h.next_payload) {
            for p in &c.payloads {
                let _ = GroupPayload::from_payload(p);
            }
        }
    }
});
