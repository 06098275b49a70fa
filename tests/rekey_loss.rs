//! Make-before-break, measured: two gateways (real workers on in-memory ports, the real IKE
//! control loop of `roamgate run` on each, `roamgate_perf::rekeys`) carry a UDP stream both
//! ways while their CHILD_SA is rekeyed 100 times in a row, started alternately by each side.
//! Not one packet may be lost. No root, no NIC.

use std::time::{Duration, Instant};

use pipeline::stats::DropReason;
use roamgate_perf::rekeys::{rekey_loss, rekey_rounds, up, IKE_A, IKE_B};

#[test]
fn a_udp_stream_survives_100_child_rekeys_without_loss() {
    let r = rekey_loss(100, 4).unwrap();
    println!(
        "100 rekeys: A->B {} sent, {} received; B->A {} sent, {} received",
        r.sent_a, r.received_b, r.sent_b, r.received_a
    );
    assert!(r.sent_a > 1000 && r.sent_b > 1000);
    assert_eq!(r.received_b, r.sent_a, "A->B lost packets");
    assert_eq!(r.received_a, r.sent_b, "B->A lost packets");
}

#[test]
fn after_100_rekeys_only_the_newest_sas_remain_and_nothing_was_dropped() {
    let (mut a, mut b) = up(IKE_A, IKE_B);
    let first = (a.ctl.children()[0].spi_in, b.ctl.children()[0].spi_in);
    rekey_rounds(&mut a, &mut b, 100, 4).unwrap();
    let last = (a.ctl.children()[0].spi_in, b.ctl.children()[0].spi_in);
    assert_ne!(first, last, "the SAs were really replaced");
    assert_eq!(
        (a.ctl.children().len(), b.ctl.children().len()),
        (1, 1),
        "old CHILD_SAs are gone"
    );
    for (w, name) in [(&a.worker, "A"), (&b.worker, "B")] {
        let s = w.handle().counters.snapshot();
        let errs: Vec<_> = s.nonzero_drops().filter(|(r, _)| r.is_error()).collect();
        assert!(errs.is_empty(), "gateway {name} dropped: {errs:?}");
        assert_eq!(s.drops(DropReason::UnknownSpi), 0);
    }
    assert_eq!(b.sink.received(), a.gen.sent().iter().sum::<u64>());
    assert_eq!(a.sink.received(), b.gen.sent().iter().sum::<u64>());
}
/// The data plane's lifetime reports drive the control plane: a soft packet lifetime on both
/// ends rekeys the CHILD_SA again and again (both ends' SAs reach it together, so the rekeys
/// collide and RFC 7296 2.8.1 decides), with nothing lost; a hard one ends the CHILD_SA.
#[test]
fn packet_lifetimes_rekey_without_loss_and_a_hard_one_ends_the_child() {
    let soft = ", child_rekey_packets: 400, child_life_packets: 100000 }";
    let (mut a, mut b) = up(
        &IKE_A.replacen(" }", soft, 1),
        &IKE_B.replacen(" }", soft, 1),
    );
    let t = Instant::now();
    while a.gen.sent().iter().sum::<u64>() < 6000 {
        a.turn(4);
        b.turn(4);
        assert!(t.elapsed() < Duration::from_secs(20), "stream stalled");
    }
    for _ in 0..200 {
        a.turn(0);
        b.turn(0);
    }
    let (sent_a, sent_b) = (a.gen.sent()[0], b.gen.sent()[0]);
    let view: serde_json::Value = serde_json::from_str(&a.ctl.view.lock().unwrap().json).unwrap();
    let (_, rekeyed_a, _) = a.ctl.child_counts();
    let (_, rekeyed_b, _) = b.ctl.child_counts();
    println!(
        "soft packet lifetime 400: {rekeyed_a}/{rekeyed_b} rekeys, A->B {sent_a} sent {} received, B->A {sent_b} sent {} received; {}",
        b.sink.received(),
        a.sink.received(),
        view["dataplane_reports"]
    );
    assert!(view["dataplane_reports"]["soft_lifetimes"].as_u64() >= Some(10));
    assert!(
        rekeyed_a >= 10 && rekeyed_b >= 10,
        "{rekeyed_a} {rekeyed_b}"
    );
    assert_eq!(
        view["dataplane_reports"]["hard_lifetimes"].as_u64(),
        Some(0)
    );
    assert_eq!(b.sink.received(), sent_a, "A->B lost packets");
    assert_eq!(a.sink.received(), sent_b, "B->A lost packets");
    assert_eq!((a.ctl.children().len(), b.ctl.children().len()), (1, 1));

    // A hard limit of 300 packets on A only, no soft one: the SA stops after 300 and A
    // deletes the CHILD_SA on both ends.
    let (mut a, mut b) = up(
        &IKE_A.replacen(" }", ", child_life_packets: 300 }", 1),
        IKE_B,
    );
    let t = Instant::now();
    while !a.ctl.children().is_empty() || !b.ctl.children().is_empty() {
        a.turn(2);
        b.turn(0);
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the CHILD_SA outlived its hard lifetime"
        );
    }
    let s = a.worker.handle().counters.snapshot();
    assert_eq!(b.sink.received(), 300, "exactly the hard limit got through");
    assert!(s.drops(DropReason::SaExpired) + s.drops(DropReason::NoSa) > 0);
}
