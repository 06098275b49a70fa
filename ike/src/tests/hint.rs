//! Unauthenticated hints that an IKE SA is dead (RFC 7296 1.5, 2.21.4: `exchange::hint`): a
//! gateway that restarted is found within the hint schedule; a forged hint costs a liveness
//! check and nothing else; the rate limit; a silent peer is left to the ordinary schedule.

use std::cell::RefCell;
use std::rc::Rc;

use super::*;
use crate::exchange::{error_answer, plain_message};
use crate::ids::IkeSpi;
use crate::stats::{HintStats, Reason};
use crate::testing::Fate;
use crate::wire::{exchange, notify, proto, Header, Payload, FLAG_INITIATOR};

/// An unprotected INVALID_SPI notification (RFC 7296 1.5) naming `spi`.
fn invalid_spi(spi: ChildSpi) -> Vec<u8> {
    plain_message(
        IkeSpi::ZERO,
        IkeSpi::ZERO,
        exchange::INFORMATIONAL,
        FLAG_INITIATOR,
        0,
        &[Payload::Notify {
            protocol: proto::ESP,
            spi: Vec::new(),
            kind: notify::INVALID_SPI,
            data: spi.to_bytes().to_vec(),
        }],
    )
}

fn hints(p: &mut Pair) -> HintStats {
    p.client().stats().hints
}

/// The client's up IKE SA and the outbound SPI of its CHILD_SA.
fn up_with_spi() -> (Pair, ChildSpi) {
    let (mut p, _, _) = up();
    let out = spis(&mut p).0[0].1;
    p.clear_events();
    (p, out)
}

#[test]
fn a_gateway_that_restarted_is_found_within_the_hint_schedule() {
    let (mut p, out) = up_with_spi();
    // The gateway restarts: a fresh endpoint, nothing of the IKE SA kept.
    *p.gw() = endpoint(gateway_cfg(), 9);
    let (t0, g, c) = (p.now(), p.gw_addr(), p.client_addr());
    // The client's ESP reached it: it has no SA and no IKE SA with the client.
    assert!(p.gw().notify_invalid_spi_unprotected(t0, g, c, out));
    p.net.run_for(Duration::from_millis(2900));
    assert!(downs(p.client_events()).is_empty(), "not on the hint alone");
    assert_eq!(p.client().list().len(), 1);
    p.net.run_for(Duration::from_millis(200));
    assert_eq!(downs(p.client_events()), vec![DownReason::PeerLostState]);
    assert_eq!(child_downs(p.client_events()), 1);
    assert!(p.client().list().is_empty());
    let h = hints(&mut p);
    assert_eq!(
        (h.invalid_spi, h.probes, h.answered, h.peer_lost),
        (1, 1, 0, 1),
        "{h:?}"
    );
    // The check went out three times (at once, 1 s, 2 s), each answered INVALID_IKE_SPI.
    assert_eq!(h.invalid_ike_spi, 3, "{h:?}");
    assert_eq!(p.gw().stats().get(Reason::UnknownSpi), 3);
    assert_eq!(p.gw().stats().hints.invalid_spi_sent, 1);
    assert_eq!(p.client().stats().get(Reason::UnprotectedRequest), 1);
    // Nothing answered the notification itself (RFC 7296 1.5: never).
    assert_eq!(p.gw().stats().get(Reason::UnknownSpiResponse), 0);
}

#[test]
fn the_gateway_sends_an_unprotected_invalid_spi_only_to_an_address_without_an_ike_sa() {
    let (mut p, out) = up_with_spi();
    let (now, g, c) = (p.now(), p.gw_addr(), p.client_addr());
    assert!(
        !p.gw().notify_invalid_spi_unprotected(now, g, c, out),
        "the client has an IKE SA here: not outside one"
    );
    let other: SocketAddr = "198.51.100.7:4500".parse().unwrap();
    let mut sent = 0;
    for _ in 0..100 {
        sent += usize::from(p.gw().notify_invalid_spi_unprotected(now, g, other, out));
    }
    assert_eq!(sent, 20, "rate-limited with the other unprotected answers");
    assert_eq!(p.gw().stats().answers_limited, 80);
}

#[test]
fn a_forged_hint_costs_a_liveness_check_and_nothing_else() {
    let (mut p, out) = up_with_spi();
    let (g, c) = (p.gw_addr(), p.client_addr());
    let sent_before = p.to_gw().len();
    let now = p.now();
    p.client().handle(now, c, g, &invalid_spi(out));
    p.net.run_for(Duration::from_secs(5));
    assert!(p.client_events().is_empty() && p.gw_events().is_empty());
    assert_eq!(p.client().list()[0].3.len(), 1, "the CHILD_SA stays");
    assert_eq!(p.to_gw().len(), sent_before + 1, "one check, answered");
    let h = hints(&mut p);
    assert_eq!((h.invalid_spi, h.probes, h.answered), (1, 1, 1), "{h:?}");

    // Within the hold-off another hint starts nothing.
    let now = p.now();
    p.client().handle(now, c, g, &invalid_spi(out));
    p.net.run_for(Duration::from_secs(1));
    assert_eq!(p.to_gw().len(), sent_before + 1);
    assert_eq!(hints(&mut p).held_back, 1);

    // Implausible ones are counted and dropped: an SPI not ours, another address.
    let now = p.now();
    p.client()
        .handle(now, c, g, &invalid_spi(ChildSpi(0x1234_5678)));
    let elsewhere: SocketAddr = "203.0.113.9:500".parse().unwrap();
    p.client().handle(now, c, elsewhere, &invalid_spi(out));
    p.net.run_for(Duration::from_secs(1));
    assert_eq!(hints(&mut p).invalid_spi, 2, "the two plausible ones");
    assert_eq!(p.client().stats().get(Reason::UnprotectedRequest), 4);
    assert_eq!(p.to_gw().len(), sent_before + 1, "nothing is ever answered");

    // After the hold-off, a forged hint and a forged INVALID_IKE_SPI answer to the check
    // while the gateway's real answer is held up: the real one still keeps the IKE SA up.
    p.net.run_for(Duration::from_secs(10));
    let held: Rc<RefCell<Vec<Vec<u8>>>> = Rc::default();
    let h2 = held.clone();
    p.net.fault = Some(Box::new(move |d| {
        if d.to == Some(GW) && h2.borrow().is_empty() {
            h2.borrow_mut().push(d.data.clone());
            Fate::Drop
        } else {
            Fate::Deliver
        }
    }));
    let now = p.now();
    p.client().handle(now, c, g, &invalid_spi(out));
    p.net.run_for(Duration::from_millis(10));
    let probe = held.borrow()[0].clone();
    let h = Header::parse(&probe).unwrap();
    let forged = error_answer(&h, notify::INVALID_IKE_SPI, vec![]);
    let now = p.now();
    p.client().handle(now, c, g, &forged);
    p.net.run_for(Duration::from_secs(10));
    assert!(
        downs(p.client_events()).is_empty(),
        "{:?}",
        p.client_events()
    );
    let h = hints(&mut p);
    assert_eq!(
        (h.probes, h.answered, h.invalid_ike_spi, h.peer_lost),
        (2, 2, 1, 0),
        "{h:?}"
    );
}

#[test]
fn a_hint_about_a_silent_peer_leaves_it_to_the_ordinary_schedule() {
    let (mut p, out) = up_with_spi();
    let (g, c) = (p.gw_addr(), p.client_addr());
    p.net.cut = true;
    let now = p.now();
    p.client().handle(now, c, g, &invalid_spi(out));
    // No INVALID_IKE_SPI came: the hint schedule runs out and the check goes on.
    p.net.run_for(Duration::from_secs(10));
    assert!(downs(p.client_events()).is_empty());
    p.net.run_for(Duration::from_secs(200));
    assert_eq!(downs(p.client_events()), vec![DownReason::Timeout]);
    assert_eq!(hints(&mut p).peer_lost, 0);
}

#[test]
fn an_idle_client_finds_its_restarted_gateway_at_its_next_liveness_check() {
    let mut c = client_cfg();
    c.dpd = Some(ms(10_000));
    let mut p = Pair::new(c, gateway_cfg());
    p.connect();
    p.drive();
    p.clear_events();
    *p.gw() = endpoint(gateway_cfg(), 9);
    // The check goes out after 10 s of silence; INVALID_IKE_SPI answers it, and 3 s of
    // the hint schedule later the IKE SA is down (dead-peer detection alone: ~165 s).
    p.net.run_for(Duration::from_secs(15));
    assert_eq!(downs(p.client_events()), vec![DownReason::PeerLostState]);
    let h = hints(&mut p);
    assert_eq!((h.probes, h.peer_lost, h.invalid_spi), (1, 1, 0), "{h:?}");
}
