//! IKE_SA_INIT floods (RFC 7296 2.6, RFC 8019): cookies demanded above the threshold and
//! round-tripped by our initiator (with INVALID_KE_PAYLOAD in between), wrong and stale
//! cookies, the secret's rotation and grace, the caps on half-open IKE SAs per source and in
//! total, their expiry, and a flood of spoofed requests that leaves the gateway small while a
//! client gets through.

use rand_core::{RngCore, SeedableRng};

use super::*;
use crate::config::Admission;
use crate::crypto::DhPrivate;
use crate::exchange::plain_message;
use crate::ids::IkeSpi;
use crate::proposal::ike_payload;
use crate::stats::Reason;
use crate::wire::{self, exchange, notify, parse_chain, Header, Payload, HEADER_LEN};

fn gw_addr() -> SocketAddr {
    "192.0.2.1:500".parse().unwrap()
}

fn secs(s: u64) -> Instant {
    Instant::from_nanos(s * 1_000_000_000)
}

fn gateway_with(a: Admission) -> Endpoint {
    Endpoint::new(
        EndpointConfig {
            peers: vec![gateway_cfg()],
            admission: a,
            ..Default::default()
        },
        [2; 32],
    )
}

/// An IKE_SA_INIT request with SPI `spi`, nonce `ni` and, first, `cookie` if given.
fn request(spi: u64, ni: &[u8], cookie: Option<&[u8]>) -> Vec<u8> {
    // One key share for every request: the gateway checks it, it need not be fresh.
    static KE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let ke = KE.get_or_init(|| {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        DhPrivate::generate(DhGroup::X25519, &mut rng)
            .public()
            .to_vec()
    });
    let mut p = Vec::new();
    if let Some(c) = cookie {
        p.push(Payload::notify(notify::COOKIE, c.to_vec()));
    }
    p.push(Payload::Sa(ike_payload(&gateway_cfg().ike_proposals, &[])));
    p.push(Payload::Ke {
        group: DhGroup::X25519.id(),
        data: ke.clone(),
    });
    p.push(Payload::Nonce(ni.to_vec()));
    plain_message(
        IkeSpi(spi),
        IkeSpi::ZERO,
        exchange::IKE_SA_INIT,
        wire::FLAG_INITIATOR,
        0,
        &p,
    )
}

/// What the endpoint sent: (destination, header, payloads).
fn sent(ep: &mut Endpoint) -> Vec<(SocketAddr, Header, Vec<Payload>)> {
    let mut v = Vec::new();
    while let Some(t) = ep.poll_transmit() {
        let h = Header::parse(&t.data).unwrap();
        let c = parse_chain(&t.data, HEADER_LEN, h.next_payload).unwrap();
        v.push((t.dst, h, c.payloads));
    }
    v
}

/// The cookie of the one answer, which must be a bare COOKIE notify with no responder SPI.
fn the_cookie(a: &[(SocketAddr, Header, Vec<Payload>)]) -> Vec<u8> {
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(a[0].1.spi_r, 0, "no state, no responder SPI");
    match a[0].2.as_slice() {
        [Payload::Notify { kind, data, .. }] if *kind == notify::COOKIE => data.clone(),
        other => panic!("not a COOKIE: {other:?}"),
    }
}

/// Whether the one answer is a full IKE_SA_INIT response (a KE payload).
fn accepted(a: &[(SocketAddr, Header, Vec<Payload>)]) -> bool {
    a.len() == 1 && a[0].2.iter().any(|p| matches!(p, Payload::Ke { .. }))
}

fn from(n: u32) -> SocketAddr {
    SocketAddr::new(std::net::Ipv4Addr::from(0x0a00_0000 + n).into(), 500)
}

fn always_cookies() -> Admission {
    Admission {
        cookie_threshold: 0,
        ..Admission::default()
    }
}

#[test]
fn a_demanded_cookie_costs_the_gateway_no_state_and_our_client_echoes_it() {
    // The gateway alone: a request without a cookie gets one and leaves nothing behind.
    let mut gw = gateway_with(always_cookies());
    gw.handle(secs(1), gw_addr(), from(1), &request(0x11, &[1; 32], None));
    let cookie = the_cookie(&sent(&mut gw));
    assert_eq!(gw.footprint(), Footprint::default(), "stateless");
    assert_eq!(gw.stats().get(Reason::InitCookieMissing), 1);
    // Echoed, from the same source with the same SPI and nonce: a full answer.
    gw.handle(
        secs(1),
        gw_addr(),
        from(1),
        &request(0x11, &[1; 32], Some(&cookie)),
    );
    assert!(accepted(&sent(&mut gw)));
    assert_eq!(gw.footprint().half_open, 1);
    let c = gw.stats().cookies;
    assert_eq!((c.sent, c.valid, c.invalid), (1, 1, 0));

    // Our initiator against it: retries with the cookie first, same SPI and nonce, connects.
    let mut p = Pair::with_endpoints(endpoint(client_cfg(), 1), gateway_with(always_cookies()));
    p.connect();
    p.drive();
    assert_eq!(
        children(p.client_events()).len(),
        1,
        "{:?}",
        p.client_events()
    );
    let reqs: Vec<_> = p
        .to_gw()
        .into_iter()
        .filter(|d| d.n < 2)
        .map(|d| {
            let h = Header::parse(&d.data).unwrap();
            (
                h,
                parse_chain(&d.data, HEADER_LEN, h.next_payload)
                    .unwrap()
                    .payloads,
            )
        })
        .collect();
    let (h0, p0) = &reqs[0];
    let (h1, p1) = &reqs[1];
    assert_eq!(h0.spi_i, h1.spi_i);
    assert!(matches!(&p1[0], Payload::Notify { kind, .. } if *kind == notify::COOKIE));
    assert_eq!(&p1[1..], &p0[..], "everything else unchanged");
    let c = p.gw().stats().cookies;
    assert_eq!((c.sent, c.valid, c.invalid), (1, 1, 0));
}

#[test]
fn cookie_then_invalid_ke_payload_keeps_the_cookie_and_connects() {
    // RFC 7296 2.6.1: COOKIE, then INVALID_KE_PAYLOAD to the request that carried it, then
    // the request with the cookie and the right group (same nonce) is taken.
    let x25519 = IkeProposal {
        encr_bits: 128,
        prf: Prf::HmacSha256,
        dh: DhGroup::X25519,
        cbc: false,
    };
    let mut c = client_cfg();
    c.ike_proposals = vec![
        IkeProposal {
            dh: DhGroup::Ecp256,
            ..x25519
        },
        x25519,
    ];
    let mut g = gateway_cfg();
    g.ike_proposals = vec![x25519];
    let gw = Endpoint::new(
        EndpointConfig {
            peers: vec![g],
            admission: always_cookies(),
            ..Default::default()
        },
        [2; 32],
    );
    let mut p = Pair::with_endpoints(endpoint(c, 1), gw);
    p.connect();
    p.drive();
    assert_eq!(
        children(p.client_events()).len(),
        1,
        "{:?}",
        p.client_events()
    );
    let c = p.gw().stats().cookies;
    assert_eq!(
        (c.sent, c.valid, c.invalid),
        (1, 2, 0),
        "one cookie, good for both retries"
    );
    let inits = p
        .to_gw()
        .iter()
        .filter(|d| Header::parse(&d.data).unwrap().exchange == exchange::IKE_SA_INIT)
        .count();
    assert_eq!(inits, 3, "no fourth round trip");
}

#[test]
fn a_wrong_or_borrowed_cookie_gets_a_fresh_one_and_no_state() {
    let mut gw = gateway_with(always_cookies());
    gw.handle(secs(1), gw_addr(), from(1), &request(0x21, &[1; 32], None));
    let good = the_cookie(&sent(&mut gw));
    let mut bent = good.clone();
    *bent.last_mut().unwrap() ^= 0x40;
    for (src, spi, ni, cookie) in [
        (from(1), 0x21, [1u8; 32], bent.clone()),
        (from(1), 0x21, [1u8; 32], vec![0xff; 40]),
        (from(2), 0x21, [1u8; 32], good.clone()), // another source
        (from(1), 0x22, [1u8; 32], good.clone()), // another SPI
        (from(1), 0x21, [2u8; 32], good.clone()), // another nonce
    ] {
        gw.handle(secs(1), gw_addr(), src, &request(spi, &ni, Some(&cookie)));
        let fresh = the_cookie(&sent(&mut gw));
        assert_ne!(fresh, cookie);
    }
    assert_eq!(gw.footprint(), Footprint::default());
    let c = gw.stats().cookies;
    assert_eq!((c.sent, c.valid, c.invalid), (6, 0, 5));
    assert_eq!(gw.stats().get(Reason::InitCookieInvalid), 5);
    assert_eq!(gw.stats().get(Reason::InitCookieMissing), 1);
    // Below the threshold a wrong cookie is ignored (2.6): the request is taken.
    let mut calm = gateway_with(Admission::default());
    calm.handle(
        secs(1),
        gw_addr(),
        from(1),
        &request(0x23, &[1; 32], Some(&bent)),
    );
    assert!(accepted(&sent(&mut calm)));
    assert_eq!(calm.stats().cookies.invalid, 1);
}

#[test]
fn cookies_outlive_a_rotation_by_the_grace_and_no_longer() {
    let a = Admission {
        cookie_threshold: 0,
        cookie_secret_lifetime: Duration::from_secs(60),
        cookie_grace: Duration::from_secs(10),
        ..Admission::default()
    };
    let mut gw = gateway_with(a);
    let cookie_at = |gw: &mut Endpoint, t: u64, spi: u64| {
        gw.handle(secs(t), gw_addr(), from(1), &request(spi, &[3; 32], None));
        the_cookie(&sent(gw))
    };
    let early = cookie_at(&mut gw, 59, 0x31);
    let late = cookie_at(&mut gw, 59, 0x32);
    let after = cookie_at(&mut gw, 61, 0x33);
    assert_ne!(early[0], after[0], "the version names the new secret");
    // 65 s: the old secret is in its grace.
    gw.handle(
        secs(65),
        gw_addr(),
        from(1),
        &request(0x31, &[3; 32], Some(&early)),
    );
    assert!(
        accepted(&sent(&mut gw)),
        "issued before the rotation, used within the grace"
    );
    gw.handle(
        secs(65),
        gw_addr(),
        from(1),
        &request(0x33, &[3; 32], Some(&after)),
    );
    assert!(accepted(&sent(&mut gw)));
    // 71 s: past the grace (60 + 10).
    gw.handle(
        secs(71),
        gw_addr(),
        from(1),
        &request(0x32, &[3; 32], Some(&late)),
    );
    let fresh = the_cookie(&sent(&mut gw));
    gw.handle(
        secs(71),
        gw_addr(),
        from(1),
        &request(0x32, &[3; 32], Some(&fresh)),
    );
    assert!(accepted(&sent(&mut gw)));
    let c = gw.stats().cookies;
    assert_eq!((c.valid, c.invalid), (3, 1));
}

#[test]
fn cookies_switch_on_at_the_threshold_and_off_when_half_open_sas_expire() {
    let a = Admission {
        cookie_threshold: 3,
        ..Admission::default()
    };
    let mut gw = gateway_with(a);
    for i in 0..3 {
        gw.handle(
            secs(1),
            gw_addr(),
            from(i),
            &request(0x40 + u64::from(i), &[4; 32], None),
        );
        assert!(accepted(&sent(&mut gw)), "below the threshold: no cookie");
    }
    assert_eq!(gw.footprint().half_open, 3);
    gw.handle(secs(1), gw_addr(), from(9), &request(0x49, &[4; 32], None));
    let c = the_cookie(&sent(&mut gw));
    gw.handle(
        secs(1),
        gw_addr(),
        from(9),
        &request(0x49, &[4; 32], Some(&c)),
    );
    assert!(accepted(&sent(&mut gw)), "with the cookie");
    assert_eq!(gw.footprint().half_open, 4);
    // The half-open IKE SAs expire (30 s); cookies are no longer asked for.
    gw.handle_timeout(secs(40));
    assert_eq!(gw.footprint(), Footprint::default());
    assert!(gw.poll_timeout().is_none());
    gw.handle(
        secs(41),
        gw_addr(),
        from(10),
        &request(0x4a, &[4; 32], None),
    );
    assert!(accepted(&sent(&mut gw)), "calm again: no cookie");
}

#[test]
fn half_open_caps_per_source_and_in_total_drop_silently_until_expiry() {
    let a = Admission {
        cookie_threshold: 1000,
        half_open_max: 5,
        half_open_per_source: 2,
        ..Admission::default()
    };
    let mut gw = gateway_with(a);
    let mut spi = 0x50;
    let mut try_from = |gw: &mut Endpoint, t: u64, src: SocketAddr| {
        spi += 1;
        gw.handle(secs(t), gw_addr(), src, &request(spi, &[5; 32], None));
        let s = sent(gw);
        assert!(s.is_empty() || accepted(&s), "{s:?}");
        accepted(&s)
    };
    let a1: SocketAddr = "10.0.0.1:500".parse().unwrap();
    let a1_other_port: SocketAddr = "10.0.0.1:4500".parse().unwrap();
    assert!(try_from(&mut gw, 1, a1));
    assert!(try_from(&mut gw, 1, a1_other_port));
    assert!(!try_from(&mut gw, 1, a1), "a third from one address");
    assert_eq!(gw.stats().get(Reason::InitHalfOpenSource), 1);
    // IPv6: a /64 is one source.
    assert!(try_from(&mut gw, 1, "[2001:db8::1]:500".parse().unwrap()));
    assert!(try_from(&mut gw, 1, "[2001:db8::2]:500".parse().unwrap()));
    assert!(!try_from(&mut gw, 1, "[2001:db8::3]:500".parse().unwrap()));
    assert_eq!(gw.stats().get(Reason::InitHalfOpenSource), 2);
    assert!(try_from(
        &mut gw,
        1,
        "[2001:db8:0:1::1]:500".parse().unwrap()
    ));
    // Five half-open: the total cap.
    assert_eq!(gw.footprint().half_open, 5);
    assert!(!try_from(&mut gw, 1, from(77)));
    assert_eq!(gw.stats().get(Reason::InitHalfOpenTotal), 1);
    assert_eq!(gw.footprint().ike_sas, 5);
    // Expired, the doors open again.
    gw.handle_timeout(secs(40));
    assert!(try_from(&mut gw, 41, a1));
    assert!(try_from(&mut gw, 41, from(77)));
}

#[test]
fn the_total_cap_holds_against_valid_cookies_too() {
    let a = Admission {
        cookie_threshold: 0,
        half_open_max: 1,
        ..Admission::default()
    };
    let mut gw = gateway_with(a);
    for (i, expect) in [(1u32, true), (2, false)] {
        let spi = 0x60 + u64::from(i);
        gw.handle(secs(1), gw_addr(), from(i), &request(spi, &[6; 32], None));
        let c = the_cookie(&sent(&mut gw));
        gw.handle(
            secs(1),
            gw_addr(),
            from(i),
            &request(spi, &[6; 32], Some(&c)),
        );
        assert_eq!(accepted(&sent(&mut gw)), expect);
    }
    assert_eq!(gw.stats().get(Reason::InitHalfOpenTotal), 1);
}

#[test]
fn another_request_under_a_half_open_sas_spi_and_address_is_dropped() {
    let mut gw = gateway_with(Admission::default());
    gw.handle(secs(1), gw_addr(), from(1), &request(0x70, &[7; 32], None));
    assert!(accepted(&sent(&mut gw)));
    // The same bytes again: a retransmission, the cached answer.
    gw.handle(secs(1), gw_addr(), from(1), &request(0x70, &[7; 32], None));
    assert!(accepted(&sent(&mut gw)));
    // Other bytes under the same key: no second IKE SA hidden behind one entry.
    gw.handle(secs(1), gw_addr(), from(1), &request(0x70, &[8; 32], None));
    assert!(sent(&mut gw).is_empty());
    assert_eq!(gw.stats().get(Reason::InitSpiInUse), 1);
    assert_eq!(gw.footprint().ike_sas, 1);
}

#[test]
fn a_flood_of_spoofed_requests_leaves_the_gateway_small_and_a_client_gets_through() {
    let mut p = Pair::new(client_cfg(), gateway_cfg());
    let threshold = Admission::default().cookie_threshold as usize;
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(77);
    let spoofed = 5000u32;
    let t0 = p.now();
    for i in 0..spoofed {
        // 10,000 per second of virtual time, each from its own address.
        let now = t0.saturating_add(Duration::from_micros(u64::from(i) * 100));
        let src = SocketAddr::new(std::net::Ipv4Addr::from(0xc612_0000 + i).into(), 500);
        let mut ni = [0u8; 32];
        rng.fill_bytes(&mut ni);
        p.gw()
            .handle(now, gw_addr(), src, &request(rng.next_u64() | 1, &ni, None));
        assert!(p.gw().footprint().ike_sas <= threshold);
    }
    let answers = sent(p.gw());
    let cookies = answers
        .iter()
        .filter(|(_, _, pl)| {
            matches!(pl.as_slice(), [Payload::Notify { kind, .. }] if *kind == notify::COOKIE)
        })
        .count();
    assert_eq!(cookies, spoofed as usize - threshold);
    assert_eq!(p.gw().footprint().half_open, threshold);
    // The client, from its real address, during the flood: one extra round trip.
    p.net.now = t0.saturating_add(Duration::from_millis(500));
    p.connect();
    p.drive();
    assert_eq!(children(p.client_events()).len(), 1);
    assert_eq!(p.gw().stats().cookies.valid, 1);
}

#[test]
fn our_initiator_follows_a_few_cookies_in_a_row_then_stops_listening() {
    let mut ep = endpoint(client_cfg(), 1);
    let (c, g) = (
        "192.0.2.10:500".parse().unwrap(),
        "192.0.2.1:500".parse().unwrap(),
    );
    ep.connect(secs(0), "gw", c, g).unwrap();
    let mut retries = 0;
    for i in 0..10u8 {
        let Some(t) = ep.poll_transmit() else { break };
        let h = Header::parse(&t.data).unwrap();
        let p = parse_chain(&t.data, HEADER_LEN, h.next_payload)
            .unwrap()
            .payloads;
        if i > 0 {
            assert!(
                matches!(&p[0], Payload::Notify { kind, data, .. } if *kind == notify::COOKIE && data == &vec![i; 8])
            );
            retries += 1;
        }
        let answer = plain_message(
            IkeSpi(h.spi_i),
            IkeSpi::ZERO,
            exchange::IKE_SA_INIT,
            wire::FLAG_RESPONSE,
            0,
            &[Payload::notify(notify::COOKIE, vec![i + 1; 8])],
        );
        ep.handle(secs(0), c, g, &answer);
    }
    assert_eq!(retries, 4);
    assert_eq!(ep.stats().get(Reason::ResponseMalformed), 1);
    assert_eq!(ep.list().len(), 1, "still waiting for a real answer");
}

#[test]
fn forged_cookie_echoes_make_no_state_and_a_valid_echo_among_them_is_admitted() {
    // The data plane gives any request whose first payload is a COOKIE notify the cookie
    // lane's headroom; here is why that opens no door: a forged echo is checked (one MAC)
    // before anything counts it, is answered like a request without a cookie and leaves
    // nothing behind, and the valid echo between them is taken.
    let mut gw = gateway_with(always_cookies());
    gw.handle(secs(1), gw_addr(), from(1), &request(0x11, &[1; 32], None));
    let cookie = the_cookie(&sent(&mut gw));
    let forged = 2000u32;
    for i in 0..forged {
        let mut fake = cookie.clone();
        fake[1 + (i as usize % 16)] ^= 1 + (i % 255) as u8;
        let spi = 0x1000 + u64::from(i);
        gw.handle(
            secs(1),
            gw_addr(),
            from(100 + i),
            &request(spi, &[2; 32], Some(&fake)),
        );
        if i == forged / 2 {
            let _ = sent(&mut gw);
            gw.handle(
                secs(1),
                gw_addr(),
                from(1),
                &request(0x11, &[1; 32], Some(&cookie)),
            );
            assert!(accepted(&sent(&mut gw)), "the valid echo is answered");
        }
        assert!(gw.footprint().half_open <= 1);
    }
    let c = gw.stats().cookies;
    assert_eq!((c.valid, c.invalid), (1, u64::from(forged)));
    assert_eq!(gw.stats().get(Reason::InitCookieInvalid), u64::from(forged));
    assert_eq!(gw.footprint().half_open, 1, "only the client's");
}
