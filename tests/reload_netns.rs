//! A configuration reload of a running gateway (issue 16 item 7): two `roamgate run`
//! gateways in the namespace lab (vendor-scripts/netns-lab.sh), A initiating two IKE
//! connections to B, "keep" (10.1.0.0/24 <-> 10.2.0.0/24, a UDP stream through it from the
//! host behind A to the host behind B) and "gone". While the stream runs, A's config file is
//! rewritten and `roamgate reload` asked:
//! - a file that does not validate (a PSK too short) is refused: non-zero exit, the message
//!   names the file and the key, the gateway keeps running what it ran;
//! - a file that changes what needs a restart (the WAN MTU) is refused the same way;
//! - a file with "keep" as it was, "gone" removed and "new" added is applied: "gone"'s IKE SA
//!   is deleted on both ends (B was told) and its SAs leave A's data plane, "new" comes up,
//!   and "keep" keeps its IKE SA and CHILD_SA SPIs on both ends;
//! - SIGHUP to `roamgate run` with a `log_level` added applies it.
//!
//! The stream through "keep" must lose nothing: 0 datagrams lost at 100 datagrams/s, across
//! all four reloads. About 25 s.
//!
//! Needs root (prints a SKIP line otherwise; CI runs it as root), iproute2, ethtool, iperf3.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use roamgate_tests::netns::{root_or_skip, DataplaneProcess, NetnsLab, NsProcess};
use roamgate_tests::strongswan::{ask, ike_view, iperf_udp, wait_for};
use roamgate_tests::{have_tool, roamgate_bin, scratch};

const PSK: &str = "reload-test-psk-0123";

fn gateway(name: &str, side: char, log_level: Option<&str>, wan_mtu: u16) -> String {
    let (lan, lan6, lan_mac, wan, wan_mac) = match side {
        'a' => (
            "10.1.0.1",
            "fd00:a::1",
            "02:00:00:00:0a:fe",
            "192.0.2.1",
            "02:00:00:00:bb:01",
        ),
        _ => (
            "10.2.0.1",
            "fd00:b::1",
            "02:00:00:00:0b:fe",
            "192.0.2.2",
            "02:00:00:00:aa:01",
        ),
    };
    let log = log_level.map_or(String::new(), |l| format!("log_level: \"{l}\"\n"));
    format!(
        "{log}gateway:
  name: {name}
  lan: {{ device: lan, address: {lan}, address6: \"{lan6}\", neighbor_mac: \"{lan_mac}\" }}
  wan: {{ device: wan, address: {wan}, neighbor_mac: \"{wan_mac}\", mtu: {wan_mtu} }}
dataplane:
  port: af_xdp
  workers: 1
  crypto_backend: auto
  af_xdp: {{ mode: auto, zero_copy: auto, frames: 8192, frame_size: 2048, ring_size: 2048 }}
ike:
  connections:
"
    )
}

/// A connection of A (initiator, to B) or B (responder) named `name`, to B's `net`.
fn conn(side: char, name: &str, net: &str, psk: &str) -> String {
    match side {
        'a' => format!(
            "    - {{ name: {name}, local_id: a-{name}.test, remote_id: b.test, psk: \"{psk}\",
        local_ts: [10.1.0.0/24], remote_ts: [{net}], remote_addr: 192.0.2.2 }}\n"
        ),
        _ => format!(
            "    - {{ name: {name}, local_id: b.test, remote_id: a-{name}.test, psk: \"{psk}\",
        local_ts: [{net}], remote_ts: [10.1.0.0/24] }}\n"
        ),
    }
}

/// A CHILD_SA's (spi_in, spi_out), hex.
type Spis = Vec<(String, String)>;

/// (connection, state, CHILD_SAs) of each IKE SA in a `run`'s control view.
fn ike_sas(socket: &Path) -> Vec<(String, String, Spis)> {
    let v = ike_view(socket);
    v["ike_sas"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|sa| {
            let children = sa["children"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|c| {
                    (
                        c["spi_in"].as_str().unwrap_or("?").to_owned(),
                        c["spi_out"].as_str().unwrap_or("?").to_owned(),
                    )
                })
                .collect();
            (
                sa["connection"].as_str().unwrap_or("?").to_owned(),
                sa["state"].as_str().unwrap_or("?").to_owned(),
                children,
            )
        })
        .collect()
}

/// The one established IKE SA of `conn` with its CHILD_SAs, if there is exactly one.
fn up(socket: &Path, conn: &str) -> Option<(String, Spis)> {
    let sas: Vec<_> = ike_sas(socket)
        .into_iter()
        .filter(|s| s.0 == conn)
        .collect();
    match sas.as_slice() {
        [(_, state, children)] if state == "ESTABLISHED" && !children.is_empty() => {
            Some((state.clone(), children.clone()))
        }
        _ => None,
    }
}

/// The SPIs (hex, as the IKE view prints them) of the SAs A's data plane holds.
fn dataplane_spis(socket: &Path) -> Vec<String> {
    let v = ask(socket, "sas");
    v["sas"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|s| s["spi"].as_str().map(str::to_owned))
        .collect()
}

/// `roamgate reload --socket S`: (exit success, stdout, stderr).
fn reload(bin: &str, socket: &Path) -> (bool, String, String) {
    let out = Command::new(bin)
        .args(["reload", "--socket", socket.to_str().unwrap()])
        .output()
        .expect("roamgate reload");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Gateway A and B, stopped with SIGTERM whatever happens (SIGKILL would leave their
/// children).
struct Gateways(Vec<DataplaneProcess>);

impl Drop for Gateways {
    fn drop(&mut self) {
        for g in self.0.drain(..) {
            let _ = g.proc.stop("TERM", Duration::from_secs(20));
        }
    }
}

#[test]
fn a_reload_adds_and_removes_connections_and_leaves_the_unchanged_tunnel_alone() {
    if !root_or_skip("reload_netns")
        || !have_tool("ip", &["-V"])
        || !have_tool("ethtool", &["--version"])
        || !have_tool("iperf3", &["--version"])
    {
        return;
    }
    let bin = roamgate_bin(env!("CARGO_BIN_EXE_roamgate"));
    let dir = scratch("reload_netns");
    let lab = NetnsLab::up(&format!("rl{}", std::process::id() % 100_000));
    let (a_yaml, b_yaml) = (dir.join("a.yaml"), dir.join("b.yaml"));
    let a_file = |log: Option<&str>, mtu: u16, conns: &[(&str, &str, &str)]| {
        let mut t = gateway("rl-a", 'a', log, mtu);
        for (n, net, psk) in conns {
            t.push_str(&conn('a', n, net, psk));
        }
        t
    };
    std::fs::write(
        &a_yaml,
        a_file(
            None,
            1500,
            &[("keep", "10.2.0.0/24", PSK), ("gone", "10.2.8.0/24", PSK)],
        ),
    )
    .unwrap();
    let mut b = gateway("rl-b", 'b', None, 1500);
    for (n, net) in [
        ("keep", "10.2.0.0/24"),
        ("gone", "10.2.8.0/24"),
        ("new", "10.2.9.0/24"),
    ] {
        b.push_str(&conn('b', n, net, PSK));
    }
    std::fs::write(&b_yaml, b).unwrap();

    let mut gws = Gateways(Vec::new());
    gws.0.push(DataplaneProcess::start_sub(
        Path::new(&bin),
        "run",
        &lab.ns("gwb"),
        &b_yaml,
        &dir,
        "rl-b",
        &[],
    ));
    gws.0.push(DataplaneProcess::start_sub(
        Path::new(&bin),
        "run",
        &lab.ns("gwa"),
        &a_yaml,
        &dir,
        "rl-a",
        &[],
    ));
    let (sock_b, sock_a) = (gws.0[0].socket.clone(), gws.0[1].socket.clone());
    // Setup may take a while on a loaded machine; the checks after the reload do not retry.
    wait_for("both tunnels up on A", 30, || {
        up(&sock_a, "keep").is_some() && up(&sock_a, "gone").is_some()
    });
    wait_for("both tunnels up on B", 10, || {
        up(&sock_b, "keep").is_some() && up(&sock_b, "gone").is_some()
    });
    wait_for("traffic through keep", 20, || {
        lab.ping("lana", "10.2.0.10", 2) == 2
    });
    let keep_a = up(&sock_a, "keep").unwrap();
    let keep_b = up(&sock_b, "keep").unwrap();
    let gone_a = up(&sock_a, "gone").unwrap().1;
    let held = dataplane_spis(&sock_a);
    for (i, o) in &gone_a {
        assert!(
            held.contains(i) && held.contains(o),
            "gone's SAs {i}/{o} are in A's data plane: {held:?}"
        );
    }

    // A UDP stream through "keep" across every reload: 100 datagrams/s for 14 s.
    let _server = NsProcess::spawn(
        &lab.ns("lanb"),
        &["iperf3", "-s", "-B", "10.2.0.10"],
        "iperf3 -s",
    );
    std::thread::sleep(Duration::from_millis(500));
    let stream = {
        let lana = lab.ns("lana");
        std::thread::spawn(move || iperf_udp(&lana, "10.2.0.10", "960k", 14))
    };
    std::thread::sleep(Duration::from_secs(2));

    // 1. A file that does not validate: refused whole, the error names file and key.
    std::fs::write(
        &a_yaml,
        a_file(
            None,
            1500,
            &[
                ("keep", "10.2.0.0/24", PSK),
                ("new", "10.2.9.0/24", "short"),
            ],
        ),
    )
    .unwrap();
    let (ok, out, err) = reload(&bin, &sock_a);
    assert!(!ok, "a broken file is refused: {out}{err}");
    assert!(
        err.contains("a.yaml")
            && err.contains("ike.connections[1].psk")
            && err.contains("shorter than 8"),
        "the refusal names file, key and what is wrong: {err}"
    );
    // 2. A change that needs a restart: refused, and says so.
    std::fs::write(
        &a_yaml,
        a_file(
            None,
            1400,
            &[("keep", "10.2.0.0/24", PSK), ("gone", "10.2.8.0/24", PSK)],
        ),
    )
    .unwrap();
    let (ok, out, err) = reload(&bin, &sock_a);
    assert!(!ok, "a new WAN MTU is refused: {out}{err}");
    assert!(
        err.contains("gateway.wan") && err.contains("needs a restart"),
        "{err}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        up(&sock_a, "gone").map(|g| g.1),
        Some(gone_a.clone()),
        "the refused files changed nothing"
    );

    // 3. "gone" removed, "new" added, "keep" as it was.
    std::fs::write(
        &a_yaml,
        a_file(
            None,
            1500,
            &[("new", "10.2.9.0/24", PSK), ("keep", "10.2.0.0/24", PSK)],
        ),
    )
    .unwrap();
    let (ok, out, err) = reload(&bin, &sock_a);
    assert!(ok, "the reload is applied: {out}{err}");
    assert!(out.contains("connection new: added"), "{out}");
    assert!(out.contains("connection gone: removed"), "{out}");
    assert!(out.contains("unchanged, left as they are: keep"), "{out}");
    println!("roamgate reload:\n{out}");
    wait_for("new up on A", 15, || up(&sock_a, "new").is_some());
    wait_for("gone deleted on A and B", 15, || {
        !ike_sas(&sock_a).iter().any(|s| s.0 == "gone")
            && !ike_sas(&sock_b).iter().any(|s| s.0 == "gone")
    });
    let held = dataplane_spis(&sock_a);
    for (i, o) in &gone_a {
        assert!(
            !held.contains(i) && !held.contains(o),
            "gone's SAs {i}/{o} left A's data plane: {held:?}"
        );
    }

    // 4. SIGHUP to `roamgate run` with a log level in the file.
    std::fs::write(
        &a_yaml,
        a_file(
            Some("debug"),
            1500,
            &[("new", "10.2.9.0/24", PSK), ("keep", "10.2.0.0/24", PSK)],
        ),
    )
    .unwrap();
    gws.0[1].proc.signal("HUP");

    let (sent, lost) = stream.join().expect("iperf3 thread");
    println!("UDP through keep across four reloads: {sent} datagrams, {lost} lost");
    assert!(sent > 1000, "the stream ran ({sent} datagrams)");
    assert_eq!(lost, 0, "no datagram of the unchanged tunnel is lost");
    assert_eq!(
        up(&sock_a, "keep"),
        Some(keep_a),
        "keep's CHILD_SA SPIs on A are unchanged"
    );
    assert_eq!(
        up(&sock_b, "keep"),
        Some(keep_b),
        "keep's CHILD_SA SPIs on B are unchanged"
    );
    assert!(up(&sock_a, "new").is_some(), "new is still up");

    let a = gws.0.pop().unwrap();
    let (_, _, err_a) = a.proc.stop("TERM", Duration::from_secs(20));
    assert!(
        err_a.contains("reload: log level: debug"),
        "SIGHUP applied the log level: {err_a}"
    );
    assert!(
        err_a.contains("reload: connection gone: removed"),
        "the log says what the reload did"
    );
}
