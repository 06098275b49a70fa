//! IKE fragmentation (RFC 7383) under any fault script: a client and a gateway (pre-shared
//! key, 150-byte fragments, so IKE_AUTH goes in several fragments each way) on the virtual-
//! time network of `ike::testing`; each input byte decides the fate of one datagram (deliver,
//! drop, duplicate, reorder, or deliver with one byte changed), and the input itself is also
//! parsed as an Encrypted Fragment payload and handed to the gateway as a datagram. Nothing
//! may panic; the bytes held for reassembly never exceed the bound and are all released once
//! the handshake is over (up or timed out).
#![no_main]

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use ike::crypto::{DhGroup, Prf};
use ike::testing::{Fate, Net};
use ike::wire::{FragmentHeader, Id};
use ike::{
    any_v4, secret, Credential, Endpoint, EndpointConfig, EspProposal, Fragmentation,
    IkeProposal, Instant, PeerConfig,
};
use libfuzzer_sys::fuzz_target;

const MAX_TOTAL: usize = 600;

fn peer(local: &str, remote: Option<&str>, vip: bool) -> PeerConfig {
    PeerConfig {
        name: "gw".into(),
        local_id: Id::from_text(local),
        remote_id: remote.map(Id::from_text),
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
        request_vip: vip,
        child_rekey: None,
        ike_rekey: None,
        dpd: None,
        child_life: None,
    }
}

fn endpoint(p: PeerConfig, seed: u8) -> Endpoint {
    Endpoint::new(
        EndpointConfig {
            peers: vec![p],
            fragmentation: Fragmentation {
                size_v4: 150,
                max_total: MAX_TOTAL,
                timeout: Duration::from_secs(5),
                ..Fragmentation::default()
            },
            ..Default::default()
        },
        [seed; 32],
    )
}

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = FragmentHeader::parse(data) {
        assert!(f.number >= 1 && f.number <= f.total);
    }
    let mut net = Net::new();
    let gw_addr = "192.0.2.1:500".parse().unwrap();
    let client_addr = "192.0.2.10:500".parse().unwrap();
    let c = net.add(endpoint(peer("rw", Some("gw"), false), 1), client_addr);
    let g = net.add(endpoint(peer("gw", None, false), 2), gw_addr);
    let script = Rc::new(RefCell::new((data.to_vec(), 0usize, Vec::<Vec<u8>>::new())));
    let s = script.clone();
    net.fault = Some(Box::new(move |d| {
        let mut st = s.borrow_mut();
        let (bytes, at, corrupt) = &mut *st;
        let Some(&b) = bytes.get(*at) else {
            return Fate::Deliver;
        };
        *at += 1;
        match b % 8 {
            0 => Fate::Drop,
            1 => Fate::Duplicate,
            2 => Fate::Reorder,
            3 => {
                // A copy with one byte changed goes in later, by hand.
                let mut m = d.data.clone();
                if !m.is_empty() {
                    let i = usize::from(b) * 7 % m.len();
                    m[i] ^= 0x5a;
                }
                corrupt.push(m);
                Fate::Deliver
            }
            _ => Fate::Deliver,
        }
    }));
    let now = net.now;
    let _ = net.ep(c).connect(now, "gw", client_addr, gw_addr);
    for _ in 0..40 {
        net.run_for(Duration::from_millis(500));
        let forged: Vec<Vec<u8>> = std::mem::take(&mut script.borrow_mut().2);
        let now = net.now;
        for m in forged {
            net.ep(g).handle(now, gw_addr, client_addr, &m);
            net.ep(c).handle(now, client_addr, gw_addr, &m);
        }
        for i in [c, g] {
            assert!(net.ep(i).fragments_held() <= MAX_TOTAL);
        }
    }
    let now = net.now;
    net.ep(g).handle(now, gw_addr, client_addr, data);
    // Long after: every retransmission ran out, every reassembly expired or completed.
    net.run_until(Instant::from_nanos(600_000_000_000));
    for i in [c, g] {
        assert_eq!(net.ep(i).fragments_held(), 0);
    }
});
