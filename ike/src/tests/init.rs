//! IKE_SA_INIT: proposals and groups, INVALID_KE_PAYLOAD, NAT detection, the float to 4500,
//! retransmitted requests, half-open expiry.

use super::*;

#[test]
fn every_proposal_and_group_negotiates() {
    for dh in [DhGroup::X25519, DhGroup::Ecp256, DhGroup::Modp2048] {
        for (encr_bits, prf) in [
            (128, Prf::HmacSha256),
            (256, Prf::HmacSha384),
            (256, Prf::HmacSha512),
        ] {
            for (esn, cbc) in [(false, false), (true, false), (false, true), (true, true)] {
                let mut c = client_cfg();
                let mut g = gateway_cfg();
                c.ike_proposals = vec![IkeProposal {
                    encr_bits,
                    prf,
                    dh,
                    cbc,
                }];
                g.ike_proposals = c.ike_proposals.clone();
                c.esp_proposals = vec![EspProposal::gcm(encr_bits, esn)];
                g.esp_proposals = c.esp_proposals.clone();
                let mut p = Pair::new(c, g);
                p.connect();
                p.drive();
                let (c, g) = (children(p.client_events()), children(p.gw_events()));
                assert_eq!(
                    (c.len(), g.len()),
                    (1, 1),
                    "{dh:?} {encr_bits} {prf:?} esn={esn}"
                );
                assert_keys_pair(&c[0], &g[0]);
                assert_eq!(c[0].outbound.keymat.len(), usize::from(encr_bits / 8) + 4);
            }
        }
    }
}

/// ESP AES-CBC with every HMAC, with and without ESN: both ends derive the same keys, the
/// encryption key followed by the integrity key (RFC 7296 2.17), and the gateway chooses the
/// client's proposal it prefers, not the first one offered.
#[test]
fn every_cbc_esp_proposal_negotiates() {
    for integ in EspInteg::ALL {
        for (encr_bits, esn) in [(128, false), (256, true)] {
            let e = EspProposal {
                encr_bits,
                esn,
                integ: Some(integ),
            };
            let mut c = client_cfg();
            let mut g = gateway_cfg();
            // The client offers GCM first; the gateway prefers this CBC suite.
            c.esp_proposals = vec![EspProposal::gcm(128, esn), e];
            g.esp_proposals = vec![e, EspProposal::gcm(128, esn)];
            let mut p = Pair::new(c, g);
            p.connect();
            p.drive();
            let (c, g) = (children(p.client_events()), children(p.gw_events()));
            assert_eq!(
                (c.len(), g.len()),
                (1, 1),
                "{integ:?} {encr_bits} esn={esn}"
            );
            assert_keys_pair(&c[0], &g[0]);
            for k in [&c[0].outbound, &c[0].inbound, &g[0].outbound] {
                assert_eq!(k.integ, Some(integ));
                assert_eq!(k.encr_bits, encr_bits);
                assert_eq!(k.keymat.len(), usize::from(encr_bits / 8) + integ.key_len());
            }
            assert_eq!(c[0].esn, esn);
        }
    }
}

/// A gateway that accepts only CBC with SHA-256 refuses a client that offers CBC with SHA-1
/// only: the integrity transform is part of the proposal.
#[test]
fn cbc_integrity_must_match() {
    let mut c = client_cfg();
    let mut g = gateway_cfg();
    c.esp_proposals = vec![EspProposal {
        encr_bits: 256,
        esn: false,
        integ: Some(EspInteg::HmacSha1_96),
    }];
    g.esp_proposals = vec![EspProposal {
        integ: Some(EspInteg::HmacSha256_128),
        ..c.esp_proposals[0]
    }];
    let mut p = Pair::new(c, g);
    p.connect();
    p.drive();
    assert!(children(p.client_events()).is_empty());
    assert!(children(p.gw_events()).is_empty());
}

#[test]
fn invalid_ke_payload_makes_the_client_retry_with_the_gateways_group() {
    let mut c = client_cfg();
    let x25519 = IkeProposal {
        encr_bits: 128,
        prf: Prf::HmacSha256,
        dh: DhGroup::X25519,
        cbc: false,
    };
    c.ike_proposals = vec![
        IkeProposal {
            dh: DhGroup::Ecp256,
            ..x25519
        },
        x25519,
    ];
    let mut g = gateway_cfg();
    g.ike_proposals = vec![x25519];
    let mut p = Pair::new(c, g);
    p.connect();
    p.drive();
    assert_eq!(
        children(p.client_events()).len(),
        1,
        "{:?}",
        p.client_events()
    );
}

#[test]
fn no_common_proposal_ends_the_attempt_on_both_sides() {
    let mut c = client_cfg();
    c.ike_proposals[0].encr_bits = 256;
    let mut p = Pair::new(c, gateway_cfg());
    p.connect();
    p.drive();
    assert_eq!(downs(p.client_events()), vec![DownReason::NoProposal]);
    assert!(p.gw().list().is_empty(), "the gateway kept no state");
    assert!(p.client().list().is_empty());
    let hs = |s: crate::HandshakeStats| (s.started, s.completed, s.failed);
    assert_eq!(hs(p.client().stats().handshakes), (1, 0, 1));
    assert_eq!(hs(p.gw().stats().handshakes), (0, 0, 0), "never admitted");
}

#[test]
fn a_site_to_site_initiator_without_nat_stays_on_500_with_plain_esp() {
    let mut c = client_cfg();
    c.request_vip = false;
    c.local_ts = vec![ts("10.8.0.0/24")];
    let mut g = gateway_cfg();
    g.pool = None;
    g.remote_ts = vec![ts("10.8.0.0/24")];
    let mut p = Pair::new(c, g);
    p.connect();
    p.drive();
    let c = children(p.client_events());
    assert_eq!(c.len(), 1);
    assert!(!c[0].udp_encap, "no NAT, no encapsulation");
    assert_eq!(c[0].remote.port(), 500);
}

#[test]
fn a_nat_is_detected_and_both_float_to_4500() {
    let mut p = Pair::new(client_cfg(), gateway_cfg());
    p.move_client("192.0.2.10:500", "198.51.100.7:31000");
    p.connect();
    p.drive();
    let (c, g) = (children(p.client_events()), children(p.gw_events()));
    assert_eq!((c.len(), g.len()), (1, 1));
    assert!(c[0].udp_encap && g[0].udp_encap);
    assert_eq!(c[0].remote.port(), 4500);
    assert_eq!(
        g[0].remote,
        "198.51.100.7:35000".parse().unwrap(),
        "the NAT's mapping for 4500"
    );
}

#[test]
fn a_retransmitted_init_request_gets_the_same_answer_and_no_second_sa() {
    let mut p = Pair::new(client_cfg(), gateway_cfg());
    p.connect();
    // Deliver the request twice (the network duplicates it).
    p.net.fault = Some(Box::new(|d| {
        if d.to == Some(GW) && d.n == 0 {
            crate::testing::Fate::Duplicate
        } else {
            crate::testing::Fate::Deliver
        }
    }));
    p.drive();
    let answers: Vec<_> = p
        .net
        .log
        .iter()
        .filter(|d| d.to == Some(CLIENT) && d.n < 2)
        .map(|d| d.data.clone())
        .collect();
    assert_eq!(answers.len(), 2);
    assert_eq!(answers[0], answers[1], "the cached answer, byte for byte");
    assert_eq!(p.gw().list().len(), 1);
    assert_eq!(children(p.gw_events()).len(), 1);
    assert_eq!(
        p.gw().half_open_entries(),
        0,
        "forgotten once authenticated"
    );
    // One handshake each, complete; the duplicate started none.
    for gw in [true, false] {
        let e = if gw { p.gw() } else { p.client() };
        let h = e.stats().handshakes;
        assert_eq!((h.started, h.completed, h.failed), (1, 1, 0));
        assert_eq!(e.sa_states().established, 1);
    }
}

#[test]
fn a_half_open_responder_sa_expires() {
    let mut p = Pair::new(client_cfg(), gateway_cfg());
    p.connect();
    // Only the IKE_SA_INIT request ever arrives.
    p.net.fault = Some(Box::new(|d| {
        if d.to == Some(GW) && d.n == 0 {
            crate::testing::Fate::Deliver
        } else {
            crate::testing::Fate::Drop
        }
    }));
    p.net.deliver();
    assert_eq!(p.gw().list().len(), 1);
    assert_eq!(p.gw().half_open_entries(), 1);
    assert_eq!(p.gw().sa_states().init, 1);
    p.net.run_for(Duration::from_secs(31));
    assert!(p.gw().list().is_empty(), "gone after the half-open timeout");
    assert_eq!(p.gw().half_open_entries(), 0);
    let h = p.gw().stats().handshakes;
    assert_eq!((h.started, h.completed, h.failed), (1, 0, 1));
    assert_eq!(p.gw().sa_states(), crate::SaStates::default());
    assert!(p.gw_events().is_empty(), "never reported: it never came up");
}
