//! The DPDK port with real mbufs and real DPDK drivers, no NIC, no hugepages, no root:
//! `--no-huge --no-pci --in-memory` with `net_ring` and `net_pcap` vdevs. The EAL can start
//! once per process, so everything runs in one test.
//!
//! Run with `cargo test -p roamgate --features dpdk --test dpdk_port`.

use std::collections::VecDeque;
use std::time::Duration;

use control::config::{self, LabConfig};
use pipeline::agent;
use pipeline::crypto::best_backend;
use pipeline::msg::Update;
use pipeline::pcap::{read_pcap, PcapWriter};
use pipeline::port::dpdk::{DpdkDevice, DpdkPort, Eal};
use pipeline::port::mem::{cable, MemFrame};
use pipeline::port::{Frame, Port};
use pipeline::sad::Sad;
use pipeline::spd::Spd;
use pipeline::stats::{DropReason, Traffic};
use pipeline::traffic::{FlowSpec, Generator};
use pipeline::worker::Worker;

use roamgate_tests::root;

fn lab() -> (
    LabConfig,
    control::config::GatewayPlan,
    control::config::GatewayPlan,
) {
    let p = root().join("configs/lab.yaml");
    let cfg: LabConfig = config::load(&p).expect("lab.yaml");
    let (a, b) = cfg.validate(&p).expect("valid");
    (cfg, a, b)
}

fn install<P: Port>(
    w: &mut Worker<P>,
    link: &mut agent::WorkerLink,
    plan: &control::config::GatewayPlan,
) {
    let mut updates: Vec<Update> = plan
        .sas
        .iter()
        .map(|(dir, params)| Update::AddSa {
            dir: *dir,
            params: params.clone(),
        })
        .collect();
    updates.push(Update::ReplaceSpd {
        rules: plan.rules.clone(),
    });
    // All queued before the first poll, which applies them before its first rx: the pcap
    // vdev delivers from the moment the port starts.
    let mut g = 0;
    for u in &updates {
        g = link.send(agent::prepare(best_backend(), u).expect("prepares"));
    }
    while link.pump() < g {
        w.poll(0);
    }
}

#[test]
fn dpdk_port_end_to_end() {
    let dir = std::env::temp_dir().join(format!("roamgate-dpdk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch");
    let plain = dir.join("plain.pcap");
    let esp = dir.join("esp.pcap");

    // Plaintext frames from site A's hosts (IPv4 and IPv6 flows of the lab), and one frame
    // that is not even IP.
    let (cfg, plan_a, plan_b) = lab();
    let flows: Vec<FlowSpec> = vec![
        FlowSpec {
            src_mac: cfg.site_a.lan.neighbor_mac.unwrap_or_default().0,
            dst_mac: cfg.site_a.lan.mac.unwrap_or_default().0,
            src: "10.1.0.10".parse().unwrap(),
            dst: "10.2.0.10".parse().unwrap(),
            src_port: 40000,
            dst_port: 5001,
        },
        FlowSpec {
            src_mac: cfg.site_a.lan.neighbor_mac.unwrap_or_default().0,
            dst_mac: cfg.site_a.lan.mac.unwrap_or_default().0,
            src: "fd00:a::10".parse().unwrap(),
            dst: "fd00:b::10".parse().unwrap(),
            src_port: 40002,
            dst_port: 5001,
        },
    ];
    let mut gen = Generator::new(flows, &[64, 512, 1418]);
    let mut originals = Vec::new();
    {
        let mut w = PcapWriter::new(std::fs::File::create(&plain).unwrap()).unwrap();
        for i in 0..300u64 {
            let mut f = MemFrame::new();
            gen.fill(&mut f, i);
            w.write(i, f.data()).unwrap();
            originals.push(f.data().to_vec());
        }
        let mut junk = vec![0u8; 60];
        junk[12..14].copy_from_slice(&[0x88, 0xb5]);
        w.write(300, &junk).unwrap();
        w.flush().unwrap();
        let mut e =
            PcapWriter::new(std::fs::File::create(dir.join("empty.pcap")).unwrap()).unwrap();
        e.flush().unwrap();
    }

    let eal = Eal::init(&[
        "--no-huge".into(),
        "--no-pci".into(),
        "--no-shconf".into(),
        format!("--file-prefix=rg-test-{}", std::process::id()),
        "-m".into(),
        "512".into(),
        "--log-level=lib.eal:error".into(),
        "--vdev=net_ring0".into(),
        "--vdev=net_null0".into(),
        format!(
            "--vdev=net_pcap0,rx_pcap={},tx_pcap={}",
            plain.display(),
            dir.join("lan-out.pcap").display()
        ),
        format!(
            "--vdev=net_pcap1,rx_pcap={},tx_pcap={}",
            dir.join("empty.pcap").display(),
            esp.display()
        ),
    ]);
    // (net_pcap1 reads an empty capture: its rx stays quiet.)
    let eal = match eal {
        Ok(e) => e,
        Err(e) => panic!("EAL: {e}"),
    };
    assert!(Eal::init(&[]).is_err(), "a second EAL init is refused");
    assert!(eal.port_count() >= 3);
    assert!(DpdkDevice::open(&eal, "net_nonexistent0", 1, 256, 0).is_err());

    // 1. The Frame contract on real mbufs (net_ring0 loops tx back to rx).
    let mut ring = DpdkDevice::open(&eal, "net_ring0", 1, 256, 0).expect("net_ring0");
    let mut port = ring.queue(0).expect("queue 0");
    assert!(ring.queue(0).is_err(), "a queue is handed out once");
    let mut f = port.alloc().expect("mbuf");
    assert_eq!(f.len(), 0);
    let head = f.headroom();
    let tail = f.tailroom();
    assert!(head >= 128, "DPDK's default headroom: {head}");
    assert!(f.append(100));
    assert_eq!((f.len(), f.tailroom()), (100, tail - 100));
    f.data_mut().copy_from_slice(&[7u8; 100]);
    assert!(!f.prepend(head + 1), "no change without room");
    assert_eq!(f.len(), 100);
    assert!(f.prepend(14));
    assert_eq!((f.len(), f.headroom()), (114, head - 14));
    assert!(f.adj(14));
    assert!(!f.adj(101));
    assert!(!f.append(f.tailroom() + 1));
    f.truncate(60);
    assert_eq!(f.data(), &[7u8; 60][..]);
    let mut q = VecDeque::from([f]);
    assert_eq!(port.tx_burst(&mut q), 1);
    let mut back = Vec::new();
    for _ in 0..100 {
        if port.rx_burst(&mut back, 32) > 0 {
            break;
        }
    }
    assert_eq!(back.len(), 1, "net_ring0 loops back");
    assert_eq!(
        back[0].data(),
        &[7u8; 60][..],
        "same bytes after a trip through the driver"
    );
    drop(back);

    // ESP steering by SPI: nothing to steer on one queue; a port without rte_flow (as every
    // vdev here) says why and leaves the hand-off to carry it.
    assert_eq!(ring.steer_esp(), Ok(0));
    let null = DpdkDevice::open(&eal, "net_null0", 2, 256, 0).expect("net_null0, 2 queues");
    match null.steer_esp() {
        Ok(n) => panic!("net_null0 took {n} rte_flow rules"),
        Err(why) => {
            println!("net_null0 ESP steering: {why}");
            assert!(why.contains("ESP over IPv4"), "{why}");
        }
    }
    drop(null);

    // 2. A real worker on two DPDK ports: plaintext from one pcap vdev, ESP to another.
    let mut lan_dev = DpdkDevice::open(&eal, "net_pcap0", 1, 512, 0).expect("net_pcap0");
    let mut wan_dev = DpdkDevice::open(&eal, "net_pcap1", 1, 512, 0).expect("net_pcap1");
    let (mut link, control) = agent::link(0, 64, None);
    let mut w: Worker<DpdkPort> = Worker::new(
        0,
        lan_dev.queue(0).unwrap(),
        wan_dev.queue(0).unwrap(),
        cfg.site_a.lan.link(),
        cfg.site_a.wan.link(),
        Sad::with_capacity(16, 1),
        Box::new(Spd::new(Vec::new()).unwrap()),
        control,
    );
    install(&mut w, &mut link, &plan_a);
    let t = std::time::Instant::now();
    while w.handle().counters.traffic(Traffic::RxPackets) < 301
        && t.elapsed() < Duration::from_secs(10)
    {
        w.poll(1);
    }
    for _ in 0..100 {
        w.poll(2);
    }
    let c = w.handle().counters;
    let drops: Vec<_> = c.snapshot().nonzero_drops().collect();
    assert_eq!(c.traffic(Traffic::RxPackets), 301, "drops: {drops:?}");
    assert_eq!(c.traffic(Traffic::Encrypted), 300, "drops: {drops:?}");
    assert_eq!(
        c.drops(DropReason::MalformedFrame),
        1,
        "the junk frame is counted"
    );
    drop(w);
    drop(lan_dev);
    drop(wan_dev); // closing the pcap vdev flushes its capture

    // 3. The site B gateway (in-memory ports) opens every ESP frame back to the original.
    let frames = read_pcap(&std::fs::read(&esp).expect("esp.pcap")).expect("pcap");
    assert_eq!(frames.len(), 300);
    let (mut hosts_b, lan_b) = cable("hosts-b", "lan-b", 1024);
    let (wan_b, mut net) = cable("wan-b", "net", 1024);
    let (mut link_b, control_b) = agent::link(0, 64, None);
    let mut wb = Worker::new(
        1,
        lan_b,
        wan_b,
        cfg.site_b.lan.link(),
        cfg.site_b.wan.link(),
        Sad::with_capacity(16, 2),
        Box::new(Spd::new(Vec::new()).unwrap()),
        control_b,
    );
    install(&mut wb, &mut link_b, &plan_b);
    let mut opened = Vec::new();
    for chunk in frames.chunks(32) {
        for f in chunk {
            assert!(net.send(MemFrame::from_bytes(f).unwrap()).is_ok());
        }
        wb.poll(3);
        let mut out = Vec::new();
        hosts_b.rx_burst(&mut out, 64);
        opened.extend(out.iter().map(|f| f.data().to_vec()));
    }
    assert_eq!(opened.len(), 300, "every ESP frame opened");
    for (o, p) in originals.iter().zip(&opened) {
        // Same inner packet, one hop further (TTL / hop limit minus 2: one per gateway).
        assert_eq!(o.len(), p.len());
        assert_eq!(o[14 + 20..].len(), p[14 + 20..].len());
        let payload_at = if o[12] == 0x86 { 14 + 40 } else { 14 + 20 };
        assert_eq!(&o[payload_at..], &p[payload_at..], "inner payload intact");
    }
    let _ = std::fs::remove_dir_all(&dir);
    drop(ring);
    let runtime_dir = eal
        .runtime_dir()
        .expect("the EAL names its runtime directory");
    assert!(runtime_dir.is_dir(), "{}", runtime_dir.display());
    drop(eal);
    assert!(
        !runtime_dir.exists(),
        "the EAL's runtime directory {} is removed on exit",
        runtime_dir.display()
    );
}
