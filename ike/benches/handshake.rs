//! IKEv2 handshakes per second on one core: a full IKE_SA_INIT + IKE_AUTH (PSK) with the
//! first CHILD_SA between an initiator and a responder endpoint in one thread, per DH group.
//! Both ends run on the measured core, so a gateway alone does roughly half this work per
//! handshake (one key generation and one shared secret each side).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ike::crypto::{DhGroup, Prf};
use ike::wire::Id;
use ike::{
    any_v4, secret, Credential, Endpoint, EndpointConfig, EspProposal, Event, IkeProposal, Instant,
    PeerConfig,
};

fn peer(name: &str, local: &str, remote: &str, dh: DhGroup) -> PeerConfig {
    PeerConfig {
        name: name.into(),
        local_id: Id::from_text(local),
        remote_id: Some(Id::from_text(remote)),
        auth: Credential::Psk(secret(b"bench-psk-0123")),
        ike_proposals: vec![IkeProposal {
            encr_bits: 128,
            prf: Prf::HmacSha256,
            dh,
            cbc: false,
        }],
        esp_proposals: vec![EspProposal::gcm(128, true)],
        local_ts: vec![any_v4()],
        remote_ts: vec![any_v4()],
        pool: None,
        request_vip: false,
        child_rekey: None,
        ike_rekey: None,
        dpd: None,
        child_life: None,
    }
}

fn handshake(c: &mut Criterion) {
    let mut g = c.benchmark_group("ike-handshake");
    g.throughput(Throughput::Elements(1));
    for dh in [DhGroup::X25519, DhGroup::Ecp256, DhGroup::Modp2048] {
        let mut client = Endpoint::new(
            EndpointConfig {
                peers: vec![peer("gw", "c.test", "g.test", dh)],
                ..Default::default()
            },
            [1; 32],
        );
        let mut gw = Endpoint::new(
            EndpointConfig {
                peers: vec![peer("c", "g.test", "c.test", dh)],
                ..Default::default()
            },
            [2; 32],
        );
        let (ca, ga) = (
            "192.0.2.10:500".parse().unwrap(),
            "192.0.2.1:500".parse().unwrap(),
        );
        let mut n = 0u64;
        g.bench_with_input(
            BenchmarkId::from_parameter(format!("{dh:?}")),
            &dh,
            |b, _| {
                b.iter(|| {
                    n += 1;
                    let now = Instant::from_nanos(n);
                    let id = client.connect(now, "gw", ca, ga).expect("connect");
                    let mut up = false;
                    while !up {
                        while let Some(t) = client.poll_transmit() {
                            gw.handle(now, t.dst, t.src, &t.data);
                        }
                        while let Some(t) = gw.poll_transmit() {
                            client.handle(now, t.dst, t.src, &t.data);
                        }
                        while let Some(e) = client.poll_event() {
                            up |= matches!(e, Event::ChildUp(_));
                        }
                        while gw.poll_event().is_some() {}
                    }
                    // Forget both SAs so the tables stay small (a delete exchange is not timed
                    // separately; it is cheap next to the DH).
                    let _ = client.delete_ike(now, id);
                    while let Some(t) = client.poll_transmit() {
                        gw.handle(now, t.dst, t.src, &t.data);
                    }
                    while let Some(t) = gw.poll_transmit() {
                        client.handle(now, t.dst, t.src, &t.data);
                    }
                    while client.poll_event().is_some() {}
                    while gw.poll_event().is_some() {}
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, handshake);
criterion_main!(benches);
