//! AES-CBC + HMAC SAs through the worker: a burst's CBC packets are sealed and opened in one
//! batch (`worker/cbc_burst.rs`), with mixed SAs and lengths, in order per SA; the same burst
//! of GCM packets, parked for their seals (`worker/gcm_burst.rs`).

use super::*;
use crate::crypto::{CbcAlg, EspAlg, IntegAlg};

const SHA256: EspAlg = EspAlg::Cbc(CbcAlg::AesCbc256, IntegAlg::HmacSha256_128);
const SHA1: EspAlg = EspAlg::Cbc(CbcAlg::AesCbc128, IntegAlg::HmacSha1_96);

/// `sa(...)` with a CBC transform and its own keys.
fn cbc_sa(alg: EspAlg, esn: bool, id: u32, spi: u32, ends: [&str; 4]) -> SaParams {
    let mut p = sa(id, spi, ends[0], ends[1], ends[2], ends[3]);
    let keymat: Vec<u8> = (0..alg.keymat_len())
        .map(|i| (i as u8) ^ spi as u8)
        .collect();
    p.keys = SaKeys::from_keymat(alg, &keymat).unwrap();
    p.esn = esn;
    p
}

/// LAN frames from `src` to `dst`, one per size.
fn frames(src: &str, dst: &str, sizes: &[usize]) -> Vec<MemFrame> {
    sizes
        .iter()
        .map(|&size| {
            let mut g = Generator::new(
                vec![FlowSpec {
                    src_mac: HOST_MAC,
                    dst_mac: LAN_MAC,
                    src: src.parse().unwrap(),
                    dst: dst.parse().unwrap(),
                    src_port: 1234,
                    dst_port: 5001,
                }],
                &[size],
            );
            let mut f = MemFrame::new();
            g.fill(&mut f, 0);
            f
        })
        .collect()
}

fn esp_of(f: &MemFrame) -> (u32, u32) {
    let ip = outer_ipv4(f);
    let e = esp::Packet::new_checked(ip.payload()).unwrap();
    (e.spi(), e.seq_number())
}

#[test]
fn a_burst_of_cbc_packets_on_two_sas_is_sealed_and_opened_in_batches() {
    burst_on_two_sas(SHA256, SHA1);
}

#[test]
fn a_burst_of_gcm_packets_on_two_sas_is_sealed_and_opened() {
    // GCM packets are parked for their seals (`worker/gcm_burst.rs`): the same burst, the
    // same outcome.
    burst_on_two_sas(
        EspAlg::Aead(crate::crypto::AeadAlg::AesGcm128),
        EspAlg::Aead(crate::crypto::AeadAlg::AesGcm256),
    );
}

/// 24 packets on two SAs (the first with ESN) sealed in one burst, in order per SA; then
/// opened in one burst with a copy of one inside it and another tampered with.
fn burst_on_two_sas(alg: EspAlg, alg2: EspAlg) {
    // The gateway under test: inbound SAs 0xb001 (`alg`, ESN) and 0xb002 (`alg2`).
    let mut r = rig(1500);
    let ends = ["192.0.2.1", "192.0.2.2", "10.1.0.0/24", "10.2.0.0/24"];
    let ends2 = ["192.0.2.1", "192.0.2.2", "10.1.0.0/24", "10.3.0.0/24"];
    r.update(Update::AddSa {
        dir: Direction::Inbound,
        params: cbc_sa(alg, true, 2, 0xb001, ends),
    });
    r.update(Update::AddSa {
        dir: Direction::Inbound,
        params: cbc_sa(alg2, false, 4, 0xb002, ends2),
    });
    // Its peer seals with the matching outbound SAs.
    let mut peer = rig(1500);
    let back = ["192.0.2.2", "192.0.2.1", "10.2.0.0/24", "10.1.0.0/24"];
    let back2 = ["192.0.2.2", "192.0.2.1", "10.3.0.0/24", "10.1.0.0/24"];
    peer.update(Update::AddSa {
        dir: Direction::Outbound,
        params: cbc_sa(alg, true, 1, 0xb001, back),
    });
    peer.update(Update::AddSa {
        dir: Direction::Outbound,
        params: cbc_sa(alg2, false, 3, 0xb002, back2),
    });
    peer.update(Update::ReplaceSpd {
        rules: vec![
            Rule {
                id: 0,
                selector: sel("10.2.0.0/24", "10.1.0.0/24"),
                action: Action::Protect(SaId(1)),
            },
            Rule {
                id: 1,
                selector: sel("10.3.0.0/24", "10.1.0.0/24"),
                action: Action::Protect(SaId(3)),
            },
        ],
    });

    // 24 packets in one burst, alternating SAs, lengths from 28 to 1400 bytes.
    let sizes: Vec<usize> = (0..24)
        .map(|i| [28, 64, 100, 576, 1000, 1400][i % 6])
        .collect();
    let mut sent = Vec::new();
    for (i, f) in frames("10.2.0.7", "10.1.0.10", &sizes)
        .into_iter()
        .zip(frames("10.3.0.7", "10.1.0.10", &sizes))
        .flat_map(|(a, b)| [a, b])
        .take(24)
        .enumerate()
    {
        let _ = i;
        sent.push(f.data()[ethernet::HEADER_LEN..].to_vec());
        assert!(peer.lan.send(f).is_ok());
    }
    peer.w.poll(1);
    let sealed: Vec<MemFrame> = std::iter::from_fn(|| peer.wan.recv()).collect();
    assert_eq!(sealed.len(), 24, "all sealed in the burst");
    // In order per SA, numbers from 1 without a gap.
    let seqs = |spi: u32| -> Vec<u32> {
        sealed
            .iter()
            .map(esp_of)
            .filter(|(s, _)| *s == spi)
            .map(|(_, q)| q)
            .collect()
    };
    assert_eq!(seqs(0xb001), (1..=12).collect::<Vec<_>>());
    assert_eq!(seqs(0xb002), (1..=12).collect::<Vec<_>>());

    // To the gateway in one burst, with a copy of the third packet right after it (a replay
    // inside the burst) and the seventh's ciphertext tampered with.
    let mut burst = Vec::new();
    let mut expect = Vec::new();
    for (i, f) in sealed.into_iter().enumerate() {
        let mut f = f;
        readdress(&mut f, WAN_MAC, PEER_MAC);
        if i == 6 {
            let n = f.len();
            f.data_mut()[n - 20] ^= 1;
        } else {
            expect.push(sent[i].clone());
        }
        if i == 2 {
            burst.push(MemFrame::from_bytes(f.data()).unwrap());
        }
        burst.push(f);
    }
    assert_eq!(burst.len(), 25);
    for f in burst {
        assert!(r.wan.send(f).is_ok());
    }
    r.w.poll(2);
    let got: Vec<Vec<u8>> = std::iter::from_fn(|| r.lan.recv())
        .map(|f| f.data()[ethernet::HEADER_LEN..].to_vec())
        .collect();
    assert_eq!(r.drops(DropReason::AuthFailed), 1, "the tampered one");
    assert_eq!(r.drops(DropReason::ReplayDuplicate), 1, "the copy");
    assert_eq!(got.len(), 23);
    // Each arrives as sent, but for the hop limit (and so the header checksum), in order.
    for (g, want) in got.iter().zip(&expect) {
        assert_eq!(g.len(), want.len());
        assert_eq!(g[..8], want[..8]);
        assert_eq!(g[8], want[8] - 2, "hop limit, one less at each gateway");
        assert_eq!(g[12..], want[12..]);
    }
}
