//! IKEv2 messages from anyone: the wire parser, then a responder endpoint handling the bytes
//! as a datagram (IKE_SA_INIT processing, SA lookup, decryption attempts). Nothing may panic.
//! Seeds: strongSwan's messages from the interop test's capture.
#![no_main]

use ike::crypto::{DhGroup, Prf};
use ike::wire::{parse_chain, Header, Id, HEADER_LEN};
use ike::{
    any_v4, secret, Credential, Endpoint, EndpointConfig, EspProposal, IkeProposal, Instant,
    PeerConfig,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Header::parse(data) {
        let _ = parse_chain(data, HEADER_LEN, h.next_payload);
    }
    let peer = PeerConfig {
        name: "rw".into(),
        local_id: Id::from_text("gw.roamgate.test"),
        remote_id: None,
        auth: Credential::Psk(secret(b"fuzz-psk-0123")),
        ike_proposals: vec![IkeProposal {
            encr_bits: 128,
            prf: Prf::HmacSha256,
            dh: DhGroup::X25519,
            cbc: false,
        }],
        esp_proposals: vec![EspProposal::gcm(128, false)],
        local_ts: vec![any_v4()],
        remote_ts: vec![any_v4()],
        pool: None,
        request_vip: false,
        child_rekey: None,
        ike_rekey: None,
        dpd: None,
        child_life: None,
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
    ep.handle(Instant::from_nanos(0), local, remote, data);
    // A second message on whatever SA the first one opened.
    ep.handle(Instant::from_nanos(1), local, remote, data);
    while ep.poll_transmit().is_some() {}
    while ep.poll_event().is_some() {}
    ep.handle_timeout(Instant::from_nanos(60_000_000_000));
});
