//! The connectivity manager's namespace test (issue 20), in the lab of
//! `vendor-scripts/netns-lab.sh vcm-up`: two road warriors on separate access networks behind
//! one router, `roamgate run` behind the router (configs/vcm-gw.yaml). One summary line per
//! case:
//!
//! - `hairpin`: two Debian strongSwan 5.9.8 clients (kernel-libipsec) exchange a 1,000
//!   packet/s UDP stream through the gateway, which opens each packet from the sender's SA and
//!   seals it again onto the receiver's (`vcm case=hairpin packets=.. lost=.. hairpinned=..
//!   rtt_ms=..`). The LAN host does not forward, so only the hairpin delivers them. The
//!   control process takes the pair for a direct-path candidate, once (hairpin detection).
//!
//! Needs root (prints a SKIP line otherwise), strongSwan and iperf3; about 20 s.

use std::path::Path;
use std::time::Duration;

use roamgate_tests::netns::{in_ns, DataplaneProcess, NsProcess};
use roamgate_tests::strongswan::{
    ask, iperf_udp, pings, strongswan_or_skip, swanctl_conf, Charon, ScriptLab,
};
use roamgate_tests::{root, scratch};

/// The binary under test: `ROAMGATE_BIN` (the release build `.ci/run` makes) or this build's.
static BIN: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| roamgate_tests::roamgate_bin(env!("CARGO_BIN_EXE_roamgate")));

/// A strongSwan road warrior of the lab, its tunnel up; returns it and its virtual IP.
fn strongswan_client(lab: &ScriptLab, dir: &Path, name: &str) -> (Charon, String) {
    let conf = swanctl_conf("vcm-rw.swanctl.conf").replace("CLIENT", name);
    let charon = Charon::start_with(&lab.ns(name), &dir.join(name), &conf);
    let out = charon.swanctl(&["--initiate", "--child", "net"]);
    assert!(
        out.contains("initiate completed successfully"),
        "{name}: {out}"
    );
    let sas = charon.swanctl(&["--list-sas"]);
    // "local  'a.roamgate.test' @ 192.0.2.10[4500] [10.99.0.1]"
    let vip = sas
        .lines()
        .find(|l| l.trim_start().starts_with("local"))
        .and_then(|l| l.rsplit_once('[')?.1.strip_suffix(']').map(str::to_owned))
        .unwrap_or_else(|| panic!("{name}: no virtual IP in {sas}"));
    (charon, vip)
}

/// The mean round-trip time (ms) of `n` pings from `ns` to `dst`.
fn rtt_ms(ns: &str, dst: &str, n: u32) -> f64 {
    let out = in_ns(
        ns,
        &["ping", "-c", &n.to_string(), "-i", "0.2", "-W", "2", dst],
    );
    // "rtt min/avg/max/mdev = 0.061/0.074/0.091/0.011 ms"
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.split_once(" = ")?.1.split('/').nth(1)?.parse().ok())
        .unwrap_or(f64::NAN)
}

#[test]
fn hairpin_between_two_strongswan_clients() {
    if !strongswan_or_skip("vcm", &["iperf3"]) {
        return;
    }
    let dir = scratch("vcm_hairpin");
    let lab = ScriptLab::up(
        "vcm-up",
        "vcm-down",
        &format!("rgv{}", std::process::id() % 100_000),
    );
    let cfg = dir.join("gw.yaml");
    std::fs::copy(root().join("configs/vcm-gw.yaml"), &cfg).unwrap();
    let gw = DataplaneProcess::start_sub(
        Path::new(BIN.as_str()),
        "run",
        &lab.ns("gw"),
        &cfg,
        &dir,
        "gw",
        &["--shm", dir.join("control.shm").to_str().unwrap()],
    );
    let (_a, vip_a) = strongswan_client(&lab, &dir, "a");
    let (_b, vip_b) = strongswan_client(&lab, &dir, "b");
    assert_ne!(vip_a, vip_b);
    // Each reaches the LAN, then the other's virtual IP.
    assert_eq!(pings(&lab.ns("a"), "10.9.0.10", 3), 3, "a -> LAN");
    assert_eq!(pings(&lab.ns("b"), "10.9.0.10", 3), 3, "b -> LAN");
    let before = ask(&gw.socket, "stats")["traffic"]["hairpinned"]
        .as_u64()
        .unwrap_or(0);
    assert_eq!(
        pings(&lab.ns("a"), &vip_b, 5),
        5,
        "a -> b through the gateway"
    );
    let rtt = rtt_ms(&lab.ns("b"), &vip_a, 5);

    // 1,000 datagrams/s of 1200 bytes, a -> b, for 3 s.
    let server = NsProcess::spawn(&lab.ns("b"), &["iperf3", "-s", "-B", &vip_b], "iperf3 -s");
    std::thread::sleep(Duration::from_millis(500));
    let (packets, lost) = iperf_udp(&lab.ns("a"), &vip_b, "9600k", 3);
    drop(server);
    let stats = ask(&gw.socket, "stats");
    let hairpinned = stats["traffic"]["hairpinned"].as_u64().unwrap_or(0) - before;
    println!(
        "vcm case=hairpin packets={packets} lost={lost} hairpinned={hairpinned} rtt_ms={rtt:.3}"
    );
    assert!(packets >= 2500, "the stream ran: {packets}");
    // Every datagram b received went through the hairpin (the LAN host forwards nothing).
    assert!(
        hairpinned >= packets - lost,
        "hairpinned {hairpinned} < received {}",
        packets - lost
    );
    assert!(lost * 100 <= packets, "{lost} of {packets} lost: {stats}");
    for r in ["hairpin_queue_full", "hairpin_mtu_exceeded"] {
        assert!(stats["drops"][r].as_u64().unwrap_or(0) == 0, "{r}: {stats}");
    }
    // The workers reported the pair; the control process took it for a direct-path candidate
    // (configs/vcm-gw.yaml: `vcm`, 100 packets/s, "*.roamgate.test"), once.
    let (_, out) = gw.stop_with_output();
    let candidates: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("a direct path candidate"))
        .collect();
    assert_eq!(candidates.len(), 1, "{out}");
    assert!(
        candidates[0].contains("(a.roamgate.test)") && candidates[0].contains("(b.roamgate.test)"),
        "{}",
        candidates[0]
    );
}
