//! `roamgate run` with `workers: 2` against strongSwan 5.9.8 (no RFC 9611): two road-warrior
//! tunnels (two IKE SAs of one charon, each with its virtual IP and one CHILD_SA), each
//! CHILD_SA on its own worker (the SPI allocator spreads them), and both workers carry
//! traffic. The veths have two queues each (vendor-scripts/netns-lab.sh rw2q-up); veth cannot
//! steer by SPI, so what lands on the other worker's queue is handed over in software
//! (`pipeline::handoff`), counted per worker in `roamgate stats`.
//!
//! Needs root (prints a SKIP line otherwise; CI runs it as root), strongSwan, iperf3.
//! Runs in about 15 s.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use roamgate_tests::netns::{in_ns, DataplaneProcess, NsProcess};
use roamgate_tests::strongswan::{
    ask, strongswan_or_skip, swanctl_conf, wait_for, Charon, ScriptLab,
};
use roamgate_tests::{root, scratch};

static BIN: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| roamgate_tests::roamgate_bin(env!("CARGO_BIN_EXE_roamgate")));

/// The interop gateway with two workers and a second connection (its own identity and pool).
fn gateway_config() -> String {
    let base = std::fs::read_to_string(root().join("configs/interop-gw.yaml")).unwrap();
    assert!(base.contains("  workers: 1\n") && base.contains("      pool: 10.99.0.0/24"));
    let base = base
        .replace("  workers: 1\n", "  workers: 2\n")
        .replace("      pool: 10.99.0.0/24", "      pool: 10.99.0.0/25");
    // The second connection: the first's block with another name, identity and pool.
    let start = base.find("    - name: rw\n").unwrap();
    let second = base[start..]
        .replace("    - name: rw\n", "    - name: rw2\n")
        .replace(
            "remote_id: rw.roamgate.test",
            "remote_id: rw2.roamgate.test",
        )
        .replace("pool: 10.99.0.0/25", "pool: 10.99.0.128/25");
    format!("{}{second}", base.trim_end_matches('\n').to_string() + "\n")
}

/// The road warrior's charon with a second connection (identity rw2) beside the first.
fn charon_config() -> String {
    let base = swanctl_conf("rw-psk.swanctl.conf");
    let start = base.find("  gw {").unwrap();
    let end = base.find("\n}\nsecrets").unwrap();
    let second = base[start..end]
        .replace("  gw {", "  gw2 {")
        .replace("id = rw.roamgate.test", "id = rw2.roamgate.test")
        .replace("net {", "net2 {");
    let with_two = format!("{}\n{second}{}", &base[..end], &base[end..]);
    with_two.replace(
        "secrets {",
        "secrets { ike-2 { id-1 = gw.roamgate.test\n    id-2 = rw2.roamgate.test\n    secret = \"lab-psk-not-secret\" } }\nsecrets {",
    )
}

/// Pings 10.9.0.10 from `src` (one of the client's virtual IPs): how many came back.
fn pings_from(ns: &str, src: &str, n: u32) -> u32 {
    let out = in_ns(
        ns,
        &[
            "ping",
            "-c",
            &n.to_string(),
            "-i",
            "0.2",
            "-W",
            "2",
            "-I",
            src,
            "10.9.0.10",
        ],
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            l.split(", ")
                .find(|p| p.ends_with("received"))
                .and_then(|p| p.split(' ').next())
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn two_workers_carry_two_strongswan_tunnels() {
    if !strongswan_or_skip("workers_netns", &["iperf3"]) {
        return;
    }
    let dir = scratch("workers_netns");
    let lab = ScriptLab::up(
        "rw2q-up",
        "rw-down",
        &format!("rgw{}", std::process::id() % 100_000),
    );
    let cfg_path = dir.join("gw.yaml");
    std::fs::write(&cfg_path, gateway_config()).unwrap();
    let gw = DataplaneProcess::start_sub(
        Path::new(BIN.as_str()),
        "run",
        &lab.ns("gw"),
        &cfg_path,
        &dir,
        "gw",
        &["--shm", dir.join("control.shm").to_str().unwrap()],
    );
    let status = ask(&gw.socket, "status");
    assert_eq!(
        status["workers"].as_array().map(Vec::len),
        Some(2),
        "{status}"
    );

    let charon = Charon::start_with(&lab.ns("rw"), &dir.join("rw"), &charon_config());
    for child in ["net", "net2"] {
        let out = charon.swanctl(&["--initiate", "--child", child]);
        assert!(
            out.contains("initiate completed successfully"),
            "{child}: {out}"
        );
    }
    // Each IKE SA's virtual IP, from its connection's pool.
    let sas = charon.swanctl(&["--list-sas"]);
    let vip_of = |id: &str| -> String {
        let line = sas
            .lines()
            .find(|l| l.contains(&format!("local  '{id}'")))
            .unwrap_or_else(|| panic!("{id} in {sas}"));
        line.rsplit_once('[')
            .and_then(|(_, v)| v.strip_suffix(']'))
            .unwrap_or_else(|| panic!("virtual IP of {id}: {sas}"))
            .to_string()
    };
    let vips = [vip_of("rw.roamgate.test"), vip_of("rw2.roamgate.test")];
    assert!(
        vips[0].starts_with("10.99.0.") && vips[0] != vips[1],
        "{sas}"
    );

    // Each CHILD_SA's two SAs live on one worker, and the two CHILD_SAs on different ones.
    wait_for("both CHILD_SAs installed", 10, || {
        ask(&gw.socket, "sas")["sas"].as_array().map_or(0, Vec::len) == 4
    });
    let listed = ask(&gw.socket, "sas");
    let mut per_worker = [0usize; 2];
    for sa in listed["sas"].as_array().unwrap() {
        per_worker[sa["worker"].as_u64().unwrap() as usize] += 1;
    }
    assert_eq!(per_worker, [2, 2], "{listed}");

    // Traffic through both tunnels, then a TCP run through the second.
    for vip in &vips {
        assert_eq!(pings_from(&lab.ns("rw"), vip, 10), 10, "pings from {vip}");
    }
    let server = NsProcess::spawn(
        &lab.ns("lan"),
        &["iperf3", "-s", "-B", "10.9.0.10"],
        "iperf3 -s",
    );
    std::thread::sleep(Duration::from_millis(500));
    let out = in_ns(
        &lab.ns("rw"),
        &[
            "timeout",
            "30",
            "iperf3",
            "-c",
            "10.9.0.10",
            "-B",
            &vips[1],
            "-t",
            "3",
            "-J",
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 JSON");
    let bytes = v["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    println!(
        "TCP through the second tunnel: {:.3} Gbit/s",
        v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0)
            / 1e9
    );
    assert!(bytes > 1_000_000, "TCP: {v}");
    drop(server);

    // Both workers sealed and opened; nothing was lost for want of an SA or a lane.
    let stats = ask(&gw.socket, "stats");
    println!("per worker: {}", stats["per_worker"]);
    let workers = stats["per_worker"].as_array().expect("per-worker counters");
    assert_eq!(workers.len(), 2, "{stats}");
    for w in workers {
        for k in ["encrypted", "decrypted"] {
            assert!(
                w["traffic"][k].as_u64() > Some(0),
                "worker {} {k}: {stats}",
                w["worker"]
            );
        }
        assert!(w["drops"].get("no_sa").is_none(), "{stats}");
        assert!(w["drops"].get("handoff_no_room").is_none(), "{stats}");
    }
    let handed: u64 = workers
        .iter()
        .map(|w| w["traffic"]["handed_off"].as_u64().unwrap_or(0))
        .sum();
    let received: u64 = workers
        .iter()
        .map(|w| w["traffic"]["handoff_received"].as_u64().unwrap_or(0))
        .sum();
    println!("handed over between the workers: {handed} (received {received})");
    assert_eq!(handed, received, "every handed-over frame arrived: {stats}");
    // `roamgate stats` prints a line per worker.
    let out = Command::new(BIN.as_str())
        .args(["stats", "--socket", gw.socket.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for w in ["worker 0:", "worker 1:"] {
        assert!(text.contains(w), "`roamgate stats` shows {w}\n{text}");
    }
    charon.stop();
}
