//! Loss across rekeys under load: two gateways (real workers on in-memory ports, the real IKE
//! control loop of `roamgate run` on each) carry a stamped UDP stream both ways while their
//! CHILD_SA is rekeyed again and again, started alternately by each side. Used by
//! `tests/rekey_loss.rs` and by `roamgate perf`.

use std::path::Path;
use std::time::{Duration, Instant};

use control::config::ike::IkeYaml;
use control::config::{self, GatewayConfig};
use control::driver::inproc::InProcControl;
use control::repo::SaRepository;
use pipeline::agent::{self, WorkerLink};
use pipeline::crypto::best_backend;
use pipeline::port::mem::{cable, MemFrame, MemPort};
use pipeline::port::Frame;
use pipeline::sad::Sad;
use pipeline::spd::Spd;
use pipeline::traffic::{FlowSpec, Generator, Sink};
use pipeline::worker::Worker;

/// Site A initiates a site-to-site tunnel to site B (the lab's addresses).
pub const IKE_A: &str = "connections:
  - { name: site, local_id: a.roamgate.test, remote_id: b.roamgate.test, psk: \"rekey-test-psk\",
      esp_proposals: [aes128gcm16-esn], local_ts: [10.1.0.0/24], remote_ts: [10.2.0.0/24],
      remote_addr: 192.0.2.2 }
";
pub const IKE_B: &str = "connections:
  - { name: site, local_id: b.roamgate.test, remote_id: a.roamgate.test, psk: \"rekey-test-psk\",
      esp_proposals: [aes128gcm16-esn], local_ts: [10.2.0.0/24], remote_ts: [10.1.0.0/24] }
";

/// One gateway with the hosts of its LAN.
pub struct Side {
    pub worker: Worker<MemPort>,
    pub hosts: MemPort,
    pub link: WorkerLink,
    pub ctl: InProcControl,
    pub gen: Generator,
    pub sink: Sink,
}

pub fn side(gw: &GatewayConfig, ike: &str, wan: MemPort, flow: FlowSpec, id: u16) -> Side {
    let conns = config::parse::<IkeYaml>(Path::new("ike.yaml"), ike)
        .expect("the IKE section parses")
        .validate(Path::new("ike.yaml"), "ike")
        .expect("the IKE section is valid");
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
    let ctl = InProcControl::new(
        conns,
        SaRepository::new(Vec::new(), 1024),
        Some(punt_rx),
        Some(tx_tx),
        best_backend(),
        gw.wan.address,
        1,
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
    pub fn turn(&mut self, n: usize) {
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

pub fn flows(cfg: &control::config::LabConfig) -> (FlowSpec, FlowSpec) {
    let f = |gw: &GatewayConfig, src: &str, dst: &str| FlowSpec {
        src_mac: gw.lan.neighbor_mac.unwrap_or_default().0,
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

/// The two sites with the tunnel up (and its policies landed).
pub fn up(ike_a: &str, ike_b: &str) -> (Side, Side) {
    let (cfg, _, _) = crate::lab();
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

/// What `rekeys` rekeys of the tunnel did to a stream both ways.
#[derive(Clone, Copy, Debug)]
pub struct RekeyLoss {
    pub rekeys: u64,
    pub sent_a: u64,
    pub received_b: u64,
    pub sent_b: u64,
    pub received_a: u64,
    pub secs: f64,
}

/// Streams `per_turn` packets each way per turn while the CHILD_SA is rekeyed `rekeys` times,
/// started alternately by each side; each rekey (and the old SA's delete) completes before the
/// next starts. Then drains and counts.
pub fn rekey_loss(rekeys: u64, per_turn: usize) -> Result<RekeyLoss, String> {
    let (mut a, mut b) = up(IKE_A, IKE_B);
    let t0 = Instant::now();
    rekey_rounds(&mut a, &mut b, rekeys, per_turn)?;
    Ok(RekeyLoss {
        rekeys,
        sent_a: a.gen.sent().iter().sum(),
        received_b: b.sink.received(),
        sent_b: b.gen.sent().iter().sum(),
        received_a: a.sink.received(),
        secs: t0.elapsed().as_secs_f64(),
    })
}

/// `rekeys` CHILD_SA rekeys in a row, started alternately by each side, each (with its old
/// SA's delete) complete before the next, with `per_turn` packets each way per turn; then a
/// drain.
pub fn rekey_rounds(
    a: &mut Side,
    b: &mut Side,
    rekeys: u64,
    per_turn: usize,
) -> Result<(), String> {
    let done = |s: &Side| s.ctl.child_counts();
    let base = (done(a).1, done(a).2, done(b).1, done(b).2);
    for i in 0..rekeys {
        if i % 2 == 0 {
            a.ctl.rekey_children();
        } else {
            b.ctl.rekey_children();
        }
        let want = i + 1;
        let t = Instant::now();
        loop {
            a.turn(per_turn);
            b.turn(per_turn);
            let (_, ra, da) = done(a);
            let (_, rb, db) = done(b);
            if ra - base.0 >= want
                && da - base.1 >= want
                && rb - base.2 >= want
                && db - base.3 >= want
            {
                break;
            }
            if t.elapsed() > Duration::from_secs(10) {
                return Err(format!("rekey {i} did not complete"));
            }
        }
    }
    for _ in 0..200 {
        a.turn(0);
        b.turn(0);
    }
    Ok(())
}
