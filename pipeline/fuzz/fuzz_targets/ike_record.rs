//! IKE SA records from anywhere (a state file, an HA link): the strict decoder, on the input
//! as it is and with a valid checksum appended (so that mutations reach the body's parser),
//! then, for what decodes, the byte form again (it must decode to the same record) and an
//! adoption by an endpoint, which then receives the input as a datagram and runs its timers.
//! Nothing may panic. Seeds: records exported by the IKE crate's tests (a gateway's and a
//! client's); the fuzzer's mutations of them mostly break the checksum, which the second
//! decode repairs after dropping the last 32 bytes.
#![no_main]

use ike::crypto::{DhGroup, Prf};
use ike::wire::Id;
use ike::{
    any_v4, secret, Credential, Endpoint, EndpointConfig, EspProposal, IkeProposal, IkeSaRecord,
    Instant, PeerConfig, Pool,
};
use libfuzzer_sys::fuzz_target;

fn peer(name: &str, local: &str) -> PeerConfig {
    PeerConfig {
        name: name.into(),
        local_id: Id::from_text(local),
        remote_id: None,
        auth: Credential::Psk(secret(b"fuzz-psk-0123")),
        ike_proposals: vec![IkeProposal {
            encr_bits: 128,
            prf: Prf::HmacSha256,
            dh: DhGroup::X25519,
            cbc: false,
        }],
        esp_proposals: vec![EspProposal::gcm(128, true)],
        local_ts: vec![any_v4()],
        remote_ts: vec![any_v4()],
        pool: Some(Pool {
            first: "10.99.0.1".parse().unwrap(),
            count: 2,
        }),
        request_vip: false,
        child_rekey: Some(core::time::Duration::from_secs(30)),
        ike_rekey: Some(core::time::Duration::from_secs(60)),
        dpd: Some(core::time::Duration::from_secs(10)),
        child_life: Some(core::time::Duration::from_secs(90)),
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = IkeSaRecord::from_bytes(data) {
        exercise(data, &r);
    }
    let content = data.get(..data.len().saturating_sub(32)).unwrap_or_default();
    let mut fixed = content.to_vec();
    fixed.extend_from_slice(ring::digest::digest(&ring::digest::SHA256, content).as_ref());
    if let Ok(r) = IkeSaRecord::from_bytes(&fixed) {
        exercise(data, &r);
    }
});

fn exercise(data: &[u8], record: &IkeSaRecord) {
    let bytes = record.to_bytes().expect("a decoded record encodes");
    let again = IkeSaRecord::from_bytes(&bytes).expect("re-encoded record decodes");
    assert!(again == *record, "the byte form round-trips");
    let _ = format!("{record:?}");
    let mut ep = Endpoint::new(
        EndpointConfig {
            peers: vec![
                peer("rw", "gw.roamgate.test"),
                peer("gw", "rw.roamgate.test"),
            ],
            ..Default::default()
        },
        [7; 32],
    );
    let now = Instant::from_nanos(1_000_000_000);
    let Ok(id) = ep.adopt(now, record) else {
        return;
    };
    let _ = ep.adopt(now, record);
    ep.handle(now, record.local, record.remote, data);
    let _ = ep.rekey_child(now, id, record.children.first().map(|c| c.spi_in).unwrap_or_default());
    let _ = ep.export(now, id);
    for s in 1..=4u64 {
        ep.handle_timeout(Instant::from_nanos(s.saturating_mul(60_000_000_000)));
        while ep.poll_transmit().is_some() {}
        while ep.poll_event().is_some() {}
    }
}
