//! Make-before-break, measured: two gateways (real workers on in-memory ports, the real IKE
//! control loop of `roamgate run` on each) carry a UDP stream both ways while their CHILD_SA
//! is rekeyed 100 times in a row, started alternately by each side. Not one packet may be
//! lost. No root, no NIC.

use std::path::Path;
use std::time::{Duration, Instant};

use control::config::{self, GatewayConfig};
use control::ike_config::IkeYaml;
use control::repo::SaRepository;
use control::runner::IkeControl;
use pipeline::agent::{self, WorkerLink};
use pipeline::crypto::best_backend;
use pipeline::port::mem::{cable, MemFrame, MemPort};
use pipeline::port::Frame;
use pipeline::sad::Sad;
use pipeline::spd::Spd;
use pipeline::stats::DropReason;
use pipeline::traffic::{FlowSpec, Generator, Sink};
use pipeline::worker::Worker;
use roamgate_tests::lab_config;

const IKE_A: &str = "connections:
  - { name: site, local_id: a.roamgate.test, remote_id: b.roamgate.test, psk: \"rekey-test-psk\",
      esp_proposals: [aes128gcm16-esn], local_ts: [10.1.0.0/24], remote_ts: [10.2.0.0/24],
      remote_addr: 192.0.2.2 }
";
const IKE_B: &str = "connections:
  - { name: site, local_id: b.roamgate.test, remote_id: a.roamgate.test, psk: \"rekey-test-psk\",
      esp_proposals: [aes128gcm16-esn], local_ts: [10.2.0.0/24], remote_ts: [10.1.0.0/24] }
";

struct Side {
    worker: Worker<MemPort>,
    hosts: MemPort,
    link: WorkerLink,
    ctl: IkeControl,
    gen: Generator,
    sink: Sink,
}

fn side(gw: &GatewayConfig, ike: &str, wan: MemPort, flow: FlowSpec, id: u16) -> Side {
    let conns = config::parse::<IkeYaml>(Path::new("ike.yaml"), ike)
        .unwrap()
        .validate(Path::new("ike.yaml"), "ike")
        .unwrap();
    let (hosts, lan) = cable("hosts", "lan", 4096);
    let (punt_tx, punt_rx) = rtrb::RingBuffer::new(256);
    let (tx_tx, tx_rx) = rtrb::RingBuffer::new(256);
    let (link, mut control) = agent::link(id, 1024, Some(punt_tx));
    control.transmit = Some(tx_rx);
    let worker = Worker::new(
        id,
        lan,
        wan,
        gw.lan.link(),
        gw.wan.link(),
        Sad::with_capacity(64, 1),
        Box::new(Spd::new(Vec::new()).unwrap()),
        control,
    );
    let ctl = IkeControl::new(
        conns,
        SaRepository::new(Vec::new(), 1024),
        Some(punt_rx),
        Some(tx_tx),
        best_backend(),
        gw.wan.address,
    );
    Side {
        worker,
        hosts,
        link,
        ctl,
        gen: Generator::new(vec![flow], &[200]),
        sink: Sink::new(1),
    }
}

impl Side {
    /// One turn: send `n` packets of the stream (if `n` > 0), run the worker and the control
    /// loop, take what reached the hosts.
    fn turn(&mut self, n: usize) {
        for _ in 0..n {
            let mut f = MemFrame::new();
            self.gen.fill(&mut f, 0);
            assert!(
                self.hosts.send(f).is_ok(),
                "the LAN cable is never full here"
            );
        }
        self.worker.poll(0);
        self.ctl.turn(&mut [&mut self.link]).unwrap();
        self.link.pump();
        while let Some(f) = self.hosts.recv() {
            self.sink.observe(f.data(), 0);
        }
    }
}

#[test]
fn a_udp_stream_survives_100_child_rekeys_without_loss() {
    let (cfg, _, _) = lab_config();
    let (wan_a, wan_b) = cable("a-wan", "b-wan", 4096);
    let flow_a = FlowSpec {
        src_mac: cfg.site_a.lan.neighbor_mac.0,
        dst_mac: cfg.site_a.lan.mac.unwrap_or_default().0,
        src: "10.1.0.10".parse().unwrap(),
        dst: "10.2.0.10".parse().unwrap(),
        src_port: 40000,
        dst_port: 5001,
    };
    let flow_b = FlowSpec {
        src_mac: cfg.site_b.lan.neighbor_mac.0,
        dst_mac: cfg.site_b.lan.mac.unwrap_or_default().0,
        src: "10.2.0.10".parse().unwrap(),
        dst: "10.1.0.10".parse().unwrap(),
        src_port: 40000,
        dst_port: 5001,
    };
    let mut a = side(&cfg.site_a, IKE_A, wan_a, flow_a, 0);
    let mut b = side(&cfg.site_b, IKE_B, wan_b, flow_b, 1);
    a.ctl.initiate();
    let t = Instant::now();
    while a.ctl.children().is_empty() || b.ctl.children().is_empty() {
        a.turn(0);
        b.turn(0);
        assert!(t.elapsed() < Duration::from_secs(10), "no CHILD_SA came up");
    }
    // Let the policies land, then stream both ways through 100 rekeys.
    for _ in 0..10 {
        a.turn(0);
        b.turn(0);
    }
    let first = (a.ctl.children()[0].spi_in, b.ctl.children()[0].spi_in);
    for i in 0..100u64 {
        let (starter, other) = if i % 2 == 0 {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        starter.ctl.rekey_children();
        let want = i + 1;
        let t = Instant::now();
        loop {
            starter.turn(4);
            other.turn(4);
            let (_, rs, ds) = starter.ctl.child_counts();
            let (_, ro, dono) = other.ctl.child_counts();
            if rs >= want && ro >= want && ds >= want && dono >= want {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "rekey {i} did not complete"
            );
        }
    }
    // Drain: stop sending, let everything in flight arrive.
    for _ in 0..200 {
        a.turn(0);
        b.turn(0);
    }
    let last = (a.ctl.children()[0].spi_in, b.ctl.children()[0].spi_in);
    assert_ne!(first, last, "the SAs were really replaced");
    assert_eq!(
        (a.ctl.children().len(), b.ctl.children().len()),
        (1, 1),
        "old CHILD_SAs are gone"
    );
    let sent_a: u64 = a.gen.sent().iter().sum();
    let sent_b: u64 = b.gen.sent().iter().sum();
    println!(
        "100 rekeys: A->B {sent_a} sent, {} received; B->A {sent_b} sent, {} received",
        b.sink.received(),
        a.sink.received()
    );
    for (w, name) in [(&a.worker, "A"), (&b.worker, "B")] {
        let s = w.handle().counters.snapshot();
        let errs: Vec<_> = s.nonzero_drops().filter(|(r, _)| r.is_error()).collect();
        assert!(errs.is_empty(), "gateway {name} dropped: {errs:?}");
        assert_eq!(s.drops(DropReason::UnknownSpi), 0);
    }
    assert!(sent_a > 1000 && sent_b > 1000);
    assert_eq!(b.sink.received(), sent_a, "A->B lost packets");
    assert_eq!(a.sink.received(), sent_b, "B->A lost packets");
}

fn flows(cfg: &control::config::LabConfig) -> (FlowSpec, FlowSpec) {
    let f = |gw: &GatewayConfig, src: &str, dst: &str| FlowSpec {
        src_mac: gw.lan.neighbor_mac.0,
        dst_mac: gw.lan.mac.unwrap_or_default().0,
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        src_port: 40000,
        dst_port: 5001,
    };
    (
        f(&cfg.site_a, "10.1.0.10", "10.2.0.10"),
        f(&cfg.site_b, "10.2.0.10", "10.1.0.10"),
    )
}

fn up(ike_a: &str, ike_b: &str) -> (Side, Side) {
    let (cfg, _, _) = lab_config();
    let (wan_a, wan_b) = cable("a-wan", "b-wan", 4096);
    let (flow_a, flow_b) = flows(&cfg);
    let mut a = side(&cfg.site_a, ike_a, wan_a, flow_a, 0);
    let mut b = side(&cfg.site_b, ike_b, wan_b, flow_b, 1);
    a.ctl.initiate();
    let t = Instant::now();
    while a.ctl.children().is_empty() || b.ctl.children().is_empty() {
        a.turn(0);
        b.turn(0);
        assert!(t.elapsed() < Duration::from_secs(10), "no CHILD_SA came up");
    }
    for _ in 0..10 {
        a.turn(0);
        b.turn(0);
    }
    (a, b)
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
