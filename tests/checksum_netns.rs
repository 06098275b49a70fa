//! Checksums left for hardware (issue 16 item 10): the namespace lab's LAN host A keeps the
//! veth default of tx checksumming on, so its TCP segments reach gateway A with the checksum
//! unfinished (CHECKSUM_PARTIAL: the pseudo-header sum only). Tunnelled as they are, host B
//! drops every one and a TCP transfer cannot even connect; the gateway counts them
//! (`clear_checksum_bad`), says so at start-up and when it first sees one. With
//! `gateway.lan.checksum: complete` the same transfer (IPv4, and IPv6 through the ESP-in-UDP
//! tunnel) arrives whole.
//!
//! Needs root (prints a SKIP line otherwise), python3 and ethtool. Run under the shared lock
//! (`flock -o /tmp/roamgate-netns.lock`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use roamgate_tests::netns::{in_ns, root_or_skip, DataplaneProcess, NetnsLab, NsProcess};
use roamgate_tests::{have_tool, root, scratch};

/// The binary under test: `ROAMGATE_BIN` (the release build `.ci/run` makes) or this build's.
static BIN: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| roamgate_tests::roamgate_bin(env!("CARGO_BIN_EXE_roamgate")));
const BYTES: usize = 300_000;

/// Accepts connections on port 5555 (both families) until killed; answers each with the
/// number of bytes it read.
const SERVER: &str = "import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(('::', 5555)); s.listen(4)
while True:
    c, _ = s.accept(); c.settimeout(10); n = 0
    try:
        while True:
            d = c.recv(65536)
            if not d: break
            n += len(d)
        c.sendall(str(n).encode())
    except OSError:
        pass
    c.close()
";

/// Sends BYTES to `dst` and prints what the server counted; fails on a timeout.
fn transfer(lab: &NetnsLab, dst: &str) -> Result<usize, String> {
    let script = format!(
        "import socket
c = socket.create_connection(('{dst}', 5555), timeout=4)
c.sendall(b'x' * {BYTES}); c.shutdown(socket.SHUT_WR)
print(c.recv(64).decode())"
    );
    let out = in_ns(&lab.ns("lana"), &["python3", "-c", &script]);
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .unwrap_or("")
            .to_string());
    }
    text.parse().map_err(|_| format!("answer {text:?}"))
}

/// netns-a/b.yaml for this test's directory, gateway A's LAN side with `checksum`.
fn configs(dir: &Path, checksum: Option<&str>) -> (PathBuf, PathBuf) {
    let a = std::fs::read_to_string(root().join("configs/netns-a.yaml")).unwrap();
    let a = match checksum {
        Some(c) => a.replace(
            "neighbor_mac: \"02:00:00:00:0a:fe\" }",
            &format!("neighbor_mac: \"02:00:00:00:0a:fe\", checksum: {c} }}"),
        ),
        None => a,
    };
    assert!(
        checksum.is_none() || a.contains("checksum: "),
        "the key went in"
    );
    let (pa, pb) = (dir.join("a.yaml"), dir.join("b.yaml"));
    std::fs::write(&pa, a).unwrap();
    std::fs::copy(root().join("configs/netns-b.yaml"), &pb).unwrap();
    (pa, pb)
}

fn traffic(stats: &serde_json::Value, k: &str) -> u64 {
    stats["traffic"][k].as_u64().unwrap_or(0)
}

#[test]
fn unfinished_lan_checksums_are_counted_and_completed() {
    if !root_or_skip("checksum_netns") {
        return;
    }
    assert!(have_tool("python3", &["--version"]) && have_tool("ethtool", &["--version"]));
    let dir = scratch("checksum_netns");
    let lab = NetnsLab::up(&format!("rgc{}", std::process::id() % 100_000));
    // Host A as a fresh veth has it: checksums left to "hardware".
    let on = in_ns(&lab.ns("lana"), &["ethtool", "-K", "lan0", "tx", "on"]);
    assert!(
        on.status.success(),
        "{}",
        String::from_utf8_lossy(&on.stderr)
    );
    let k = String::from_utf8_lossy(&in_ns(&lab.ns("lana"), &["ethtool", "-k", "lan0"]).stdout)
        .into_owned();
    assert!(k.contains("tx-checksumming: on"), "{k}");
    let _server = NsProcess::spawn(&lab.ns("lanb"), &["python3", "-c", SERVER], "tcp server");
    std::thread::sleep(Duration::from_millis(300));

    let mut results = Vec::new();
    for checksum in [None, Some("complete")] {
        let (pa, pb) = configs(&dir, checksum);
        let a = DataplaneProcess::start(Path::new(BIN.as_str()), &lab.ns("gwa"), &pa, &dir, "gw-a");
        let b = DataplaneProcess::start(Path::new(BIN.as_str()), &lab.ns("gwb"), &pb, &dir, "gw-b");
        assert_eq!(
            lab.ping("lana", "10.2.0.10", 2),
            2,
            "the tunnel carries ping"
        );
        let v4 = transfer(&lab, "10.2.0.10");
        let v6 = transfer(&lab, "fd00:b::10");
        std::thread::sleep(Duration::from_millis(1200));
        let (stats, out) = a.stop_with_output();
        b.stop();
        println!(
            "gateway.lan.checksum {}: IPv4 {v4:?}, IPv6 {v6:?}; checked {}, bad {}, completed {}",
            checksum.unwrap_or("(pass)"),
            traffic(&stats, "clear_checksum_checked"),
            traffic(&stats, "clear_checksum_bad"),
            traffic(&stats, "clear_checksum_completed"),
        );
        results.push((checksum, v4, v6, stats, out));
    }
    let (_, v4, v6, stats, out) = &results[0];
    assert!(
        v4.is_err() && v6.is_err(),
        "unfinished checksums tunnelled as they are: B drops them"
    );
    assert!(
        traffic(stats, "clear_checksum_bad") >= 1,
        "counted (sampled): {stats}"
    );
    assert_eq!(traffic(stats, "clear_checksum_completed"), 0);
    assert!(
        out.contains("peer is in another namespace"),
        "start-up warning:\n{out}"
    );
    assert!(
        out.contains("unfinished or wrong checksums"),
        "first-seen warning:\n{out}"
    );
    let (_, v4, v6, stats, out) = &results[1];
    assert_eq!(
        v4.as_ref().ok(),
        Some(&BYTES),
        "IPv4 with checksum: complete"
    );
    assert_eq!(
        v6.as_ref().ok(),
        Some(&BYTES),
        "IPv6 with checksum: complete"
    );
    assert!(traffic(stats, "clear_checksum_completed") >= 10, "{stats}");
    assert_eq!(
        traffic(stats, "clear_checksum_completed"),
        traffic(stats, "clear_checksum_bad")
    );
    assert!(
        !out.contains("another namespace"),
        "no start-up warning once completing:\n{out}"
    );
}
