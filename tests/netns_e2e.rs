//! End to end on real ports: two `roamgate dataplane` processes in their own network
//! namespaces, joined by a veth "internet" (a bridge in a third namespace), each with a LAN
//! host namespace behind it (vendor-scripts/netns-lab.sh). Static SAs from
//! configs/netns-{a,b}.yaml. Each test: IPv4 and IPv6 pings between the LANs, an iperf3 TCP
//! run, path-MTU discovery through the tunnel, a capture on the internet link that must hold
//! only ESP, then malformed frames injected on the link, which must be counted and dropped
//! while the gateways keep forwarding.
//!
//! Needs root (prints a SKIP line otherwise; CI runs as root) and iproute2, ethtool, ping,
//! iperf3, tshark and python3.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use roamgate_tests::netns::{root_or_skip, Capture, DataplaneProcess, NetnsLab, NsProcess};
use roamgate_tests::{have_tool, root, scratch};

/// The binary under test: `ROAMGATE_BIN` (the release build `.ci/run` makes) or this build's.
static BIN: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| roamgate_tests::roamgate_bin(env!("CARGO_BIN_EXE_roamgate")));

/// One lab at a time: the machine has two cores, and each lab runs two busy gateways.
static SERIAL: Mutex<()> = Mutex::new(());

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "dpdk"), allow(dead_code))]
enum Kind {
    AfXdp,
    Dpdk,
}

/// The gateway's config for the port kind: the shipped AF_XDP file, or its DPDK variant
/// (af_packet vdevs on the same veths).
fn config(side: &str, kind: Kind, dir: &Path) -> PathBuf {
    let shipped = root().join(format!("configs/netns-{side}.yaml"));
    match kind {
        Kind::AfXdp => shipped,
        Kind::Dpdk => {
            let text = std::fs::read_to_string(&shipped).expect("read config");
            let text = text
                .replace("device: lan,", "device: net_af_packet0,")
                .replace("device: wan,", "device: net_af_packet1,")
                .replace("port: af_xdp", "port: dpdk");
            let text = format!(
                "{text}\n  dpdk: {{ eal_args: [{}] }}\n",
                dpdk_eal_args(side)
                    .iter()
                    .map(|a| format!("\"{a}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let p = dir.join(format!("netns-{side}-dpdk.yaml"));
            std::fs::write(&p, text).expect("write config");
            p
        }
    }
}

/// Where gateway A serves its metrics (inside its namespace).
const METRICS: &str = "127.0.0.1:9464";

/// `curl http://ADDR/metrics` returns text an independent parser reads, and every traffic and
/// drop counter in it lies between `roamgate stats` read just before and just after; the SAs
/// have their own series.
fn metrics_agree_with_stats(lab: &NetnsLab, gw: &DataplaneProcess) {
    let stats = || -> serde_json::Value {
        let out = Command::new(BIN.as_str())
            .args([
                "stats",
                "--json",
                "--socket",
                gw.socket.to_str().expect("utf-8"),
            ])
            .output()
            .expect("roamgate stats");
        serde_json::from_slice(&out.stdout).expect("stats --json")
    };
    let url = format!("http://{METRICS}/metrics");
    let before = stats();
    let out = roamgate_tests::netns::in_ns(&lab.ns("gwa"), &["curl", "-sf", &url]);
    let after = stats();
    assert!(out.status.success(), "curl {url}: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("the metrics parse");
    let value = |s: &prometheus_parse::Sample| match s.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v as u64,
        _ => panic!("{s:?}"),
    };
    let mut checked = 0;
    for s in &scrape.samples {
        let (section, key) = match s.metric.as_str() {
            "roamgate_traffic_packets_total" => {
                let e = s.labels.get("event").expect("event label");
                let key = if e == "rx" || e == "tx" {
                    format!("{e}_packets")
                } else {
                    e.to_string()
                };
                ("traffic", key)
            }
            "roamgate_traffic_bytes_total" => (
                "traffic",
                format!("{}_bytes", s.labels.get("event").expect("event label")),
            ),
            "roamgate_drops_total" => (
                "drops",
                s.labels.get("reason").expect("reason label").to_string(),
            ),
            "roamgate_handed_off_total" => (
                "handed_off",
                s.labels.get("reason").expect("reason label").to_string(),
            ),
            _ => continue,
        };
        let (lo, hi) = (
            before[section][&key].as_u64().unwrap_or(0),
            after[section][&key].as_u64().unwrap_or(0),
        );
        let v = value(s);
        assert!(
            lo <= v && v <= hi,
            "{} {key}: metrics {v}, stats {lo}..{hi}",
            s.metric
        );
        checked += 1;
    }
    assert!(checked > 20, "{checked} counters compared:\n{text}");
    for (spi, dir) in [("0000a001", "out"), ("0000b001", "in")] {
        let sa = scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == "roamgate_sa_packets_total"
                    && s.labels.get("spi") == Some(spi)
                    && s.labels.get("direction") == Some(dir)
            })
            .unwrap_or_else(|| panic!("no series for SA {spi}:\n{text}"));
        assert!(value(sa) > 0, "{sa:?}");
    }
    // Anything but GET /metrics gets its status code, and the listener goes on.
    for (args, code) in [(vec!["-X", "POST"], "405"), (vec![], "404")] {
        let target = if code == "404" {
            format!("http://{METRICS}/nothing")
        } else {
            url.clone()
        };
        let mut cmd = vec!["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}"];
        cmd.extend(args);
        cmd.push(&target);
        let out = roamgate_tests::netns::in_ns(&lab.ns("gwa"), &cmd);
        assert_eq!(String::from_utf8_lossy(&out.stdout), code, "{cmd:?}");
    }
    let out = roamgate_tests::netns::in_ns(&lab.ns("gwa"), &["curl", "-sf", &url]);
    assert!(
        out.status.success(),
        "the listener serves after bad requests"
    );
}

fn dpdk_eal_args(side: &str) -> Vec<String> {
    vec![
        "--no-huge".into(),
        "--no-pci".into(),
        "--no-shconf".into(),
        format!("--file-prefix=rg-{side}"),
        "-m".into(),
        "256".into(),
        "--log-level=lib.eal:error".into(),
        "--vdev=net_af_packet0,iface=lan".into(),
        "--vdev=net_af_packet1,iface=wan".into(),
    ]
}

fn tools_present() -> bool {
    have_tool("ip", &["-V"])
        && have_tool("ethtool", &["--version"])
        && have_tool("ping", &["-V"])
        && have_tool("iperf3", &["--version"])
        && have_tool("tshark", &["--version"])
        && have_tool("python3", &["--version"])
        && have_tool("curl", &["--version"])
}

/// A frame from the internet side to gateway A's WAN MAC.
fn to_gw_a(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0xaa, 0x01, 0x02, 0, 0, 0, 0xbb, 0x01];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An IPv4 header (valid checksum) from B's to A's tunnel address, then `payload`.
fn ipv4(proto: u8, payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0, 192, 0, 2, 2, 192, 0, 2, 1]);
    let mut sum = 0u32;
    for c in h.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    h[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// Malformed and unauthenticated frames, with the counter each one must land in.
fn bad_frames() -> Vec<(Vec<u8>, &'static str)> {
    let mut esp_unknown = 0x0bad_0001u32.to_be_bytes().to_vec();
    esp_unknown.extend_from_slice(&[0, 0, 0, 1]);
    esp_unknown.extend_from_slice(&[0x55; 64]);
    // A real inbound SPI of A (b-to-a) with garbage ciphertext: the ICV cannot verify.
    let mut esp_forged = 0x0000_b001u32.to_be_bytes().to_vec();
    esp_forged.extend_from_slice(&[0, 0, 0, 7]);
    esp_forged.extend_from_slice(&[0x42; 80]);
    let mut bad_csum = ipv4(50, &esp_forged);
    bad_csum[10] ^= 0xff;
    vec![
        (to_gw_a(0x0800, &[0x45, 0, 0]), "malformed_ip"),
        (to_gw_a(0x0800, &ipv4(50, &[0, 0, 0xb0])), "esp_truncated"),
        (to_gw_a(0x0800, &ipv4(50, &esp_unknown)), "unknown_spi"),
        (to_gw_a(0x0800, &ipv4(50, &esp_forged)), "auth_failed"),
        (to_gw_a(0x0800, &bad_csum), "ip_checksum"),
        (to_gw_a(0x88b5, &[0; 46]), "malformed_frame"),
    ]
}

fn drops(stats: &serde_json::Value, reason: &str) -> u64 {
    stats["drops"][reason].as_u64().unwrap_or(0)
}

fn run(test: &str, prefix: &str, kind_a: Kind, kind_b: Kind) {
    if !root_or_skip(test) || !tools_present() {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = scratch(test);
    let lab = NetnsLab::up(prefix);
    // Gateway A serves Prometheus metrics on its namespace's loopback.
    let up = Command::new("ip")
        .args(["-n", &lab.ns("gwa"), "link", "set", "lo", "up"])
        .status()
        .expect("ip");
    assert!(up.success());
    let gw_a = DataplaneProcess::start_sub(
        Path::new(BIN.as_str()),
        "dataplane",
        &lab.ns("gwa"),
        &config("a", kind_a, &dir),
        &dir,
        "gw-a",
        &["--metrics", METRICS],
    );
    let gw_b = DataplaneProcess::start(
        Path::new(BIN.as_str()),
        &lab.ns("gwb"),
        &config("b", kind_b, &dir),
        &dir,
        "gw-b",
    );
    // Everything the two gateways put on the internet link (the bridge's own chatter, such
    // as IGMP, is not theirs).
    let capture = Capture::start(
        &lab.ns("net"),
        "br0",
        "ether src 02:00:00:00:aa:01 or ether src 02:00:00:00:bb:01",
        &dir.join("internet.pcap"),
    );

    // Pings both ways, both families.
    assert_eq!(lab.ping("lana", "10.2.0.10", 5), 5, "IPv4 ping A -> B");
    assert_eq!(lab.ping("lanb", "10.1.0.10", 5), 5, "IPv4 ping B -> A");
    assert_eq!(lab.ping("lana", "fd00:b::10", 5), 5, "IPv6 ping A -> B");

    // Path MTU: a 1500-byte DF packet cannot fit with ESP overhead; the gateway answers with
    // ICMP fragmentation-needed, so the second try fails locally with the tunnel's MTU.
    let before = gw_a.stats()["traffic"]["icmp_sent"].as_u64().unwrap_or(0);
    let out = roamgate_tests::netns::in_ns(
        &lab.ns("lana"),
        &[
            "ping",
            "-c",
            "2",
            "-i",
            "0.3",
            "-M",
            "do",
            "-s",
            "1472",
            "10.2.0.10",
        ],
    );
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    std::thread::sleep(Duration::from_millis(1200));
    let after = gw_a.stats()["traffic"]["icmp_sent"].as_u64().unwrap_or(0);
    assert!(after > before, "no ICMP frag-needed sent: {text}");
    assert!(
        text.contains("mtu=14"),
        "host did not learn the tunnel MTU: {text}"
    );

    // iperf3 TCP, A -> B.
    let server = NsProcess::spawn(
        &lab.ns("lanb"),
        &["iperf3", "-s", "-1", "-B", "10.2.0.10"],
        "iperf3 server",
    );
    std::thread::sleep(Duration::from_millis(500));
    let out = roamgate_tests::netns::in_ns(
        &lab.ns("lana"),
        &["iperf3", "-c", "10.2.0.10", "-t", "3", "-J"],
    );
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("iperf3 -J prints JSON");
    let bps = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0);
    let bytes = report["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    drop(server);
    println!(
        "{test}: iperf3 TCP A->B through the tunnel: {:.3} Gbit/s ({} MB)",
        bps / 1e9,
        bytes / 1_000_000
    );
    assert!(
        bytes > 1_000_000,
        "iperf3 moved only {bytes} bytes: {report}"
    );

    // The gateways sent nothing but ESP (IPv4) and ESP-in-UDP (IPv6) on the internet link.
    let protocols = capture.finish();
    let is_esp = |p: &String| {
        p == "eth:ethertype:ip:esp"
            || p == "eth:ethertype:ipv6:udp:esp"
            || p == "eth:ethertype:ipv6:udp:udpencap:esp"
    };
    let esp = protocols.iter().filter(|p| is_esp(p)).count();
    let other: Vec<&String> = protocols.iter().filter(|p| !is_esp(p)).collect();
    assert!(esp > 1000, "only {esp} ESP frames captured");
    assert!(
        other.is_empty(),
        "non-ESP frames on the internet link: {other:?}"
    );
    println!("{test}: {esp} frames on the internet link, all ESP");

    // Malformed and forged frames: each counted under its reason, nothing else changes.
    let before = gw_a.stats();
    let frames = bad_frames();
    lab.inject(
        "a",
        &frames.iter().map(|(f, _)| f.clone()).collect::<Vec<_>>(),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let after = gw_a.stats();
    for (_, reason) in &frames {
        assert!(
            drops(&after, reason) > drops(&before, reason),
            "injected frame for {reason} not counted: before {before} after {after}"
        );
    }
    assert_eq!(
        lab.ping("lana", "10.2.0.10", 3),
        3,
        "gateway forwards after bad input"
    );

    // The read-only views: `roamgate sa` lists the SAs with their counters, never keys.
    let out = Command::new(BIN.as_str())
        .args(["sa", "--socket", gw_a.socket.to_str().expect("utf-8")])
        .output()
        .expect("roamgate sa");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "roamgate sa failed: {text}");
    for (name, dir, spi) in [("a-to-b", "out", "0000a001"), ("b-to-a", "in", "0000b001")] {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(name) && l.contains(spi))
            .unwrap_or_else(|| panic!("no {name} in `roamgate sa`:\n{text}"));
        assert!(line.contains(&format!(" {dir} ")), "{line}");
        assert!(!line.contains(" 0 packets"), "{line}");
    }
    let config = std::fs::read_to_string(root().join("configs/netns-a.yaml")).expect("config");
    for key in config
        .split('"')
        .filter(|w| w.len() >= 40 && w.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        assert!(!text.contains(key), "`roamgate sa` printed key material");
    }
    let out = Command::new(BIN.as_str())
        .args(["stats", "--socket", gw_a.socket.to_str().expect("utf-8")])
        .output()
        .expect("roamgate stats");
    let stats_text = String::from_utf8_lossy(&out.stdout);
    assert!(stats_text.contains("auth_failed"), "{stats_text}");
    let out = Command::new(BIN.as_str())
        .args(["status", "--socket", gw_a.socket.to_str().expect("utf-8")])
        .output()
        .expect("roamgate status");
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(
        status.contains("worker 0: generation") && status.contains("2 inbound / 2 outbound SAs"),
        "{status}"
    );
    assert!(
        status.contains(if kind_a == Kind::AfXdp {
            "AF_XDP"
        } else {
            "DPDK"
        }),
        "{status}"
    );

    metrics_agree_with_stats(&lab, &gw_a);

    let final_a = gw_a.stop();
    let final_b = gw_b.stop();
    for s in [&final_a, &final_b] {
        assert!(
            s["traffic"]["encrypted"].as_u64().unwrap_or(0) > 1000,
            "{s}"
        );
        assert!(s["traffic"]["decrypted"].as_u64().unwrap_or(0) > 100, "{s}");
        // The hosts have no static neighbour entries: they learned the gateways' MACs from
        // roamgate's own ARP replies and neighbour advertisements.
        assert!(
            s["traffic"]["neighbor_replies"].as_u64().unwrap_or(0) >= 2,
            "{s}"
        );
    }
    // A DPDK data plane that stopped leaves no runtime directory behind (the EAL creates
    // /var/run/dpdk/<file-prefix> even with --no-shconf).
    for (side, kind) in [("a", kind_a), ("b", kind_b)] {
        let dir = std::path::PathBuf::from(format!("/var/run/dpdk/rg-{side}"));
        assert!(
            kind != Kind::Dpdk || !dir.exists(),
            "{} left behind",
            dir.display()
        );
    }
}

#[test]
fn af_xdp_both_gateways() {
    run(
        "netns_af_xdp",
        &format!("rgx{}", std::process::id() % 100_000),
        Kind::AfXdp,
        Kind::AfXdp,
    );
}

#[cfg(feature = "dpdk")]
#[test]
fn dpdk_both_gateways() {
    run(
        "netns_dpdk",
        &format!("rgd{}", std::process::id() % 100_000),
        Kind::Dpdk,
        Kind::Dpdk,
    );
}

#[cfg(feature = "dpdk")]
#[test]
fn af_xdp_and_dpdk_mixed() {
    run(
        "netns_mixed",
        &format!("rgm{}", std::process::id() % 100_000),
        Kind::AfXdp,
        Kind::Dpdk,
    );
}

/// iperf3 A -> B: (TCP Gbit/s, UDP 64-byte datagrams delivered per second).
fn iperf_pair(lab: &NetnsLab) -> (f64, f64) {
    let in_ns = roamgate_tests::netns::in_ns;
    let server = NsProcess::spawn(
        &lab.ns("lanb"),
        &["iperf3", "-s", "-B", "10.2.0.10"],
        "iperf3 -s",
    );
    std::thread::sleep(Duration::from_millis(500));
    let tcp: serde_json::Value = serde_json::from_slice(
        &in_ns(
            &lab.ns("lana"),
            &["iperf3", "-c", "10.2.0.10", "-t", "5", "-J"],
        )
        .stdout,
    )
    .expect("iperf3 JSON");
    let udp: serde_json::Value = serde_json::from_slice(
        &in_ns(
            &lab.ns("lana"),
            &[
                "iperf3",
                "-c",
                "10.2.0.10",
                "-u",
                "-b",
                "0",
                "-l",
                "64",
                "-t",
                "5",
                "-J",
            ],
        )
        .stdout,
    )
    .expect("iperf3 JSON");
    drop(server);
    let gbps = tcp["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e9;
    let s = &udp["end"]["sum"];
    let pkts = s["packets"].as_f64().unwrap_or(0.0);
    let lost = s["lost_packets"].as_f64().unwrap_or(0.0);
    let secs = s["seconds"].as_f64().unwrap_or(1.0).max(1e-9);
    (gbps, (pkts - lost) / secs)
}

/// Not a test: measures what each port kind carries on this machine's veth lab, next to the
/// kernel forwarding the same traffic in the clear over the same veths (the cap). Run with
/// `cargo test --release -p roamgate --features dpdk --test netns_e2e -- --ignored --nocapture`.
#[test]
#[ignore]
fn measure_port_throughput() {
    if !root_or_skip("measure_port_throughput") || !tools_present() {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = scratch("measure_port_throughput");
    let mut rows = Vec::new();

    // The cap: kernel IP forwarding in the gateway namespaces, no crypto.
    {
        let lab = NetnsLab::up(&format!("{}{}", "rgk", std::process::id() % 100_000));
        let in_ns = roamgate_tests::netns::in_ns;
        for (g, lan, wan, peer, remote) in [
            (
                "gwa",
                "10.1.0.1/24",
                "192.0.2.1/24",
                "192.0.2.2",
                "10.2.0.0/24",
            ),
            (
                "gwb",
                "10.2.0.1/24",
                "192.0.2.2/24",
                "192.0.2.1",
                "10.1.0.0/24",
            ),
        ] {
            let ns = lab.ns(g);
            in_ns(&ns, &["ip", "addr", "add", lan, "dev", "lan"]);
            in_ns(&ns, &["ip", "addr", "add", wan, "dev", "wan"]);
            in_ns(&ns, &["ip", "route", "add", remote, "via", peer]);
            in_ns(&ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        }
        let (gbps, pps) = iperf_pair(&lab);
        rows.push(("kernel forwarding, clear (veth cap)", gbps, pps));
    }
    let mut kinds = vec![(Kind::AfXdp, "roamgate AF_XDP, ESP")];
    if cfg!(feature = "dpdk") {
        kinds.push((Kind::Dpdk, "roamgate DPDK net_af_packet, ESP"));
    }
    for (kind, label) in kinds {
        let lab = NetnsLab::up(&format!("{}{}", "rgp", std::process::id() % 100_000));
        let a = DataplaneProcess::start(
            Path::new(BIN.as_str()),
            &lab.ns("gwa"),
            &config("a", kind, &dir),
            &dir,
            "gw-a",
        );
        let b = DataplaneProcess::start(
            Path::new(BIN.as_str()),
            &lab.ns("gwb"),
            &config("b", kind, &dir),
            &dir,
            "gw-b",
        );
        let (gbps, pps) = iperf_pair(&lab);
        a.stop();
        b.stop();
        rows.push((label, gbps, pps));
    }
    println!(
        "\n{:<40} {:>12} {:>16}",
        "path A -> B", "TCP Gbit/s", "UDP 64 B pkt/s"
    );
    for (label, gbps, pps) in &rows {
        println!("{label:<40} {gbps:>12.3} {pps:>16.0}");
    }
}
