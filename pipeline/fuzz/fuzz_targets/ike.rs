//! IKEv2 messages from anyone: the wire parser, then a responder endpoint handling the bytes
//! as a datagram (IKE_SA_INIT processing, SA lookup, decryption attempts). Nothing may panic.
//! Seeds: strongSwan's messages from the interop test's capture.
#![no_main]

use ike::crypto::{DhGroup, Prf};
use ike::sa::{
    any_v4, secret, Authenticator, Endpoint, EndpointConfig, EspProposal, IkeProposal, PeerConfig,
};
use ike::wire::{parse_chain, Header, Id, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Header::parse(data) {
        let _ = parse_chain(data, HEADER_LEN, h.next_payload);
    }
    let peer = PeerConfig {
        name: "rw".into(),
        local_id: Id::from_text("gw.roamgate.test"),
        remote_id: None,
        auth: Authenticator::Psk(secret(b"fuzz-psk-0123")),
        ike_proposals: vec![IkeProposal {
            encr_bits: 128,
            prf: Prf::HmacSha256,
            dh: DhGroup::X25519,
            cbc: false,
        }],
        esp_proposals: vec![EspProposal {
            encr_bits: 128,
            esn: false,
        }],
        local_ts: vec![any_v4()],
        remote_ts: vec![any_v4()],
        pool: None,
        request_vip: false,
        child_rekey_ns: 0,
        ike_rekey_ns: 0,
        dpd_ns: 0,
        child_life_ns: 0,
    };
    let mut ep = Endpoint::new(
        EndpointConfig {
            peers: vec![peer],
            ..Default::default()
        },
        [7; 32],
    );
    let local = "192.0.2.1:500".parse().unwrap();
    let remote = "192.0.2.10:500".parse().unwrap();
    ep.handle(0, local, remote, data);
    // A second message on whatever SA the first one opened.
    ep.handle(1, local, remote, data);
    while ep.poll_transmit().is_some() {}
    while ep.poll_event().is_some() {}
    ep.handle_timeout(60_000_000_000);
});
