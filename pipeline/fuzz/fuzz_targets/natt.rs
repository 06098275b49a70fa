#![no_main]
//! NAT-T classification of a UDP/4500 payload.
use libfuzzer_sys::fuzz_target;
use pipeline::wire::natt::{self, Kind};

fuzz_target!(|data: &[u8]| {
    match natt::classify(data) {
        Kind::Keepalive => assert_eq!(data, natt::NAT_KEEPALIVE),
        Kind::Ike => assert!(natt::ike_message(data).is_some()),
        Kind::Esp => {
            assert!(data.len() >= natt::MIN_ESP_LEN);
            assert!(data.get(..4) != Some(&natt::NON_ESP_MARKER[..]));
        }
        Kind::Malformed => assert!(natt::ike_message(data).is_none()),
    }
});
