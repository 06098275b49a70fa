//! Interop with Debian's strongSwan 5.9.8 (kernel-libipsec) as a road-warrior client against
//! `roamgate run` on the AF_XDP port, in network namespaces (vendor-scripts/netns-lab.sh
//! rw-up): the tunnel comes up with a virtual IP; ping, a UDP stream and an iperf3 TCP run pass
//! through it; a capture of the client's link holds only IKE and ESP; a CHILD_SA rekey and an
//! IKE rekey initiated by each side complete with traffic still flowing; a delete from each
//! side tears the tunnel down on both.
//!
//! Needs root (prints a SKIP line otherwise; CI runs it as root), strongSwan, iperf3, tshark.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use roamgate_tests::netns::{Capture, DataplaneProcess, NsProcess};
use roamgate_tests::strongswan::{
    ask, assert_only_ike_and_esp, ike_view, iperf_tcp, iperf_udp, strongswan_or_skip, swanctl_conf,
    swanctl_sas, wait_for, Charon, ScriptLab,
};
use roamgate_tests::{root, scratch};

/// The binary under test: `ROAMGATE_BIN` (the release build `.ci/run` makes) or this build's.
static BIN: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| roamgate_tests::roamgate_bin(env!("CARGO_BIN_EXE_roamgate")));
/// Where the gateway serves its metrics (inside its namespace).
const METRICS: &str = "127.0.0.1:9464";

/// `curl http://METRICS/metrics` in the gateway's namespace, parsed by prometheus-parse: a
/// reader of one sample by name and labels (gateway "gw"), which must be there.
fn ike_metrics(lab: &ScriptLab) -> impl Fn(&str, &[(&str, &str)]) -> f64 {
    let url = format!("http://{METRICS}/metrics");
    let out = roamgate_tests::netns::in_ns(&lab.ns("gw"), &["curl", "-sf", &url]);
    assert!(out.status.success(), "curl {url}: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("the metrics parse");
    move |metric, labels| {
        scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == metric
                    && s.labels.get("gateway") == Some("gw")
                    && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
            })
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .unwrap_or_else(|| panic!("no {metric} {labels:?}:\n{text}"))
    }
}

fn rw_lab(prefix: &str) -> ScriptLab {
    ScriptLab::up("rw-up", "rw-down", prefix)
}

/// Pings the gateway's LAN host from the road warrior.
fn pings(lab: &ScriptLab, n: u32) -> u32 {
    roamgate_tests::strongswan::pings(&lab.ns("rw"), "10.9.0.10", n)
}

/// Two texts in two columns.
fn side_by_side(left: &str, right: &str) -> String {
    let width = left.lines().map(|l| l.chars().count()).max().unwrap_or(0) + 2;
    let (l, r): (Vec<&str>, Vec<&str>) = (left.lines().collect(), right.lines().collect());
    (0..l.len().max(r.len()))
        .map(|i| {
            let a = l.get(i).copied().unwrap_or("");
            let b = r.get(i).copied().unwrap_or("");
            format!("{a:<width$}| {b}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `roamgate sa --json` (the gateway, responder) and `swanctl --list-sas` (the client,
/// initiator) describe the same tunnel, mirrored: SPIs, addresses and ports, identities, the
/// IKE and ESP proposals, the selectors, NAT, and the packets each way (no traffic flows
/// between the pings before and this look).
fn sa_views_agree(charon: &Charon, socket: &Path) {
    let sock = socket.to_str().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(BIN.as_str()).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "roamgate {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = run(&["sa", "--socket", sock]);
    let ours: serde_json::Value =
        serde_json::from_str(&run(&["sa", "--json", "--socket", sock])).unwrap();
    let theirs_text = charon.swanctl(&["--list-sas"]);
    println!(
        "{}",
        side_by_side(
            &format!("roamgate sa (the gateway)\n\n{text}"),
            &format!("swanctl --list-sas (strongSwan, the client)\n\n{theirs_text}")
        )
    );
    let raw = swanctl_sas(&charon.swanctl(&["--list-sas", "--raw"]));
    let t = &raw["gw"];
    let r = &ours["ike_sas"][0];
    let both = format!("roamgate: {ours:#}\nstrongSwan: {raw:#}");
    let st = |v: &serde_json::Value| {
        v.as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string())
    };
    let eq = |what: &str, a: &serde_json::Value, b: &serde_json::Value| {
        assert_eq!(st(a), st(b), "{what}\n{both}");
    };
    eq("state", &r["state"], &t["state"]);
    eq("SPIi", &r["spi_i"], &t["initiator-spi"]);
    eq("SPIr", &r["spi_r"], &t["responder-spi"]);
    assert_eq!(r["initiator"], false, "{both}");
    assert_eq!(t["initiator"], "yes", "{both}");
    eq("our address", &r["local_host"], &t["remote-host"]);
    eq("our port", &r["local_port"], &t["remote-port"]);
    eq("the peer's address", &r["remote_host"], &t["local-host"]);
    eq("the peer's port", &r["remote_port"], &t["local-port"]);
    eq("our identity", &r["local_id"], &t["remote-id"]);
    eq("the peer's identity", &r["remote_id"], &t["local-id"]);
    eq(
        "IKE encryption",
        &r["proposal"]["encryption"],
        &t["encr-alg"],
    );
    eq(
        "IKE key size",
        &r["proposal"]["key_size"],
        &t["encr-keysize"],
    );
    eq("PRF", &r["proposal"]["prf"], &t["prf-alg"]);
    eq("DH group", &r["proposal"]["dh_group"], &t["dh-group"]);
    assert_eq!(
        r["nat"],
        t.get("nat-any").is_some_and(|v| v == "yes"),
        "NAT\n{both}"
    );
    let vips = t["local-vips"].as_array().cloned().unwrap_or_default();
    assert_eq!(vips, [r["virtual_ip"].clone()], "virtual IP\n{both}");
    let children: Vec<&serde_json::Value> = t["child-sas"]
        .as_object()
        .expect("child-sas")
        .values()
        .collect();
    let (rc, tc) = (&r["children"][0], children[0]);
    assert_eq!(
        (r["children"].as_array().map(Vec::len), children.len()),
        (Some(1), 1),
        "{both}"
    );
    eq("CHILD_SA state", &rc["state"], &tc["state"]);
    eq("mode", &rc["mode"], &tc["mode"]);
    eq("protocol", &rc["protocol"], &tc["protocol"]);
    eq("our inbound SPI", &rc["in"]["spi"], &tc["spi-out"]);
    eq("our outbound SPI", &rc["out"]["spi"], &tc["spi-in"]);
    eq(
        "ESP encryption",
        &rc["proposal"]["encryption"],
        &tc["encr-alg"],
    );
    eq(
        "ESP key size",
        &rc["proposal"]["key_size"],
        &tc["encr-keysize"],
    );
    assert_eq!(
        rc["proposal"]["esn"].as_bool(),
        Some(tc.get("esn").is_some_and(|v| v == "1")),
        "ESN\n{both}"
    );
    assert_eq!(
        rc["udp_encap"].as_bool(),
        Some(tc.get("encap").is_some_and(|v| v == "yes")),
        "encap\n{both}"
    );
    eq("our selectors", &rc["local_ts"], &tc["remote-ts"]);
    eq("the peer's selectors", &rc["remote_ts"], &tc["local-ts"]);
    eq("packets to us", &rc["in"]["packets"], &tc["packets-out"]);
    eq("packets from us", &rc["out"]["packets"], &tc["packets-in"]);
    assert!(rc["in"]["packets"].as_u64() >= Some(5), "{both}");
    assert!(rc["in"]["last_use_secs"].as_u64().is_some(), "{both}");
    // The text names the same SPIs and selectors.
    for spi in [
        &rc["in"]["spi"],
        &rc["out"]["spi"],
        &r["spi_i"],
        &r["spi_r"],
    ] {
        assert!(text.contains(spi.as_str().unwrap()), "{spi} in:\n{text}");
    }
}

#[test]
fn strongswan_road_warrior_against_roamgate_run() {
    if !strongswan_or_skip("strongswan_interop", &["iperf3", "tshark"]) {
        return;
    }
    let dir = scratch("strongswan_interop");
    let lab = rw_lab(&format!("rgi{}", std::process::id() % 100_000));
    // roamgate rekeys on its own too: the CHILD_SA every 8 s, the IKE SA every 14 s.
    let cfg = std::fs::read_to_string(root().join("configs/interop-gw.yaml"))
        .unwrap()
        .replace(
            "      pool: 10.99.0.0/24",
            "      pool: 10.99.0.0/24\n      child_rekey_secs: 8\n      ike_rekey_secs: 14",
        );
    let cfg_path = dir.join("gw.yaml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let gw = DataplaneProcess::start_sub(
        Path::new(BIN.as_str()),
        "run",
        &lab.ns("gw"),
        &cfg_path,
        &dir,
        "gw",
        &[
            "--shm",
            dir.join("control.shm").to_str().unwrap(),
            "--metrics",
            METRICS,
        ],
    );
    // Every IPv4 frame on the client's link (the namespace's own multicast chatter, IGMP and
    // IPv6 neighbour discovery, is not tunnel traffic; a leak of inner IPv4 would show).
    let capture = Capture::start(
        &lab.ns("rw"),
        "eth0",
        "ip and not igmp",
        &dir.join("rw-link.pcap"),
    );
    let charon = Charon::start_with(
        &lab.ns("rw"),
        &dir.join("rw"),
        &swanctl_conf("rw-psk.swanctl.conf"),
    );

    // Up, with a virtual IP.
    let out = charon.swanctl(&["--initiate", "--child", "net"]);
    assert!(out.contains("initiate completed successfully"), "{out}");
    let sas = charon.swanctl(&["--list-sas"]);
    assert!(sas.contains("[10.99.0.1]"), "virtual IP: {sas}");
    assert_eq!(pings(&lab, 5), 5, "ping through the tunnel");
    sa_views_agree(&charon, &gw.socket);

    // A malformed IKE message (a header whose length field says more than arrived) to the
    // gateway: the control plane
    // counts it by reason and `roamgate stats`/`sa` show it; the data plane lists punted IKE
    // as a hand-off, not as a drop.
    let sent = Command::new("ip")
        .args(["netns", "exec", &lab.ns("rw"), "python3", "-c"])
        .arg("import socket, struct; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(struct.pack('!QQBBBBII', 0x1122334455667788, 0, 0, 0x20, 34, 8, 0, 100), ('192.0.2.1', 500))")
        .status()
        .unwrap();
    assert!(sent.success());
    wait_for("the IKE drop in the view", 10, || {
        ike_view(&gw.socket)["ike_drops"]["length_mismatch"].as_u64() >= Some(1)
    });
    let dp = ask(&gw.socket, "stats");
    assert!(dp["drops"].get("ike_punted").is_none(), "{dp}");
    assert!(dp["handed_off"]["ike_punted"].as_u64() >= Some(1), "{dp}");
    for view in ["stats", "sa"] {
        let out = Command::new(BIN.as_str())
            .args([view, "--socket", gw.socket.to_str().unwrap()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.lines()
                .any(|l| l.contains("length_mismatch") && l.trim_end().ends_with('1')),
            "`roamgate {view}` shows the IKE drop:\n{text}"
        );
    }

    // `run --metrics`: the data plane's endpoint shows the control process's IKE counters
    // (read over its view socket at scrape time), parsed by an independent reader: the one
    // handshake strongSwan made, the one IKE SA the view (`roamgate sa`) lists, the drop
    // `roamgate stats` shows.
    let v = ike_view(&gw.socket);
    let listed = v["ike_sas"].as_array().map_or(0, Vec::len) as f64;
    assert_eq!(listed, 1.0, "{v}");
    let scrape = ike_metrics(&lab);
    assert_eq!(
        scrape("roamgate_ike_handshakes_completed_total", &[]),
        listed
    );
    assert_eq!(scrape("roamgate_ike_handshakes_started_total", &[]), listed);
    assert_eq!(scrape("roamgate_ike_handshakes_failed_total", &[]), 0.0);
    assert_eq!(
        scrape("roamgate_ike_sas", &[("state", "established")]),
        listed
    );
    assert_eq!(
        scrape("roamgate_ike_drops_total", &[("reason", "length_mismatch")]),
        v["ike_drops"]["length_mismatch"].as_f64().unwrap_or(-1.0)
    );

    // The client rekeys its CHILD_SA and the IKE SA.
    assert!(charon
        .swanctl(&["--rekey", "--child", "net"])
        .contains("rekey completed successfully"));
    assert_eq!(pings(&lab, 2), 2);
    assert!(charon
        .swanctl(&["--rekey", "--ike", "gw"])
        .contains("rekey completed successfully"));
    assert_eq!(pings(&lab, 2), 2);
    // `swanctl --rekey` only queues the rekey in charon (vici replies once the job is
    // queued): the exchanges may still be under way here.
    wait_for("the client's rekeys in the gateway's view", 10, || {
        let v = ike_view(&gw.socket);
        v["child_rekeys_by_peer"].as_u64() >= Some(1) && v["ike_rekeys_by_peer"].as_u64() >= Some(1)
    });

    // A UDP stream and a TCP run, LAN host <- client (its virtual IP), during which roamgate's
    // own rekey timers fire.
    let server = NsProcess::spawn(
        &lab.ns("lan"),
        &["iperf3", "-s", "-B", "10.9.0.10"],
        "iperf3 -s",
    );
    std::thread::sleep(Duration::from_millis(500));
    let (pk, lost) = iperf_udp(&lab.ns("rw"), "10.9.0.10", "20M", 4);
    println!("UDP stream through strongSwan <-> roamgate: {pk} datagrams, {lost} lost");
    assert!(
        pk > 1000 && lost * 100 <= pk,
        "UDP stream: {pk} sent, {lost} lost"
    );
    let (bytes, bps) = iperf_tcp(&lab.ns("rw"), "10.9.0.10", 4);
    println!(
        "TCP through strongSwan <-> roamgate: {:.3} Gbit/s",
        bps / 1e9
    );
    assert!(bytes > 1_000_000, "TCP: {bytes} bytes");
    drop(server);

    // roamgate's own rekeys happened (CHILD_SA and IKE SA) and traffic still flows.
    wait_for("roamgate-initiated rekeys", 30, || {
        let v = ike_view(&gw.socket);
        v["child_rekeys_by_us"].as_u64() >= Some(1) && v["ike_rekeys_by_us"].as_u64() >= Some(1)
    });
    assert_eq!(pings(&lab, 3), 3, "traffic after roamgate's rekeys");
    let sas = charon.swanctl(&["--list-sas"]);
    assert!(
        sas.contains("ESTABLISHED") && sas.contains("INSTALLED"),
        "{sas}"
    );

    // The supervisor restarts a data plane that dies; the tunnel comes back without a new
    // IKE handshake (the control plane rekeys the CHILD_SA for the fresh data plane).
    let dp_pid = Command::new("ip")
        .args(["netns", "pids", &lab.ns("gw")])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
        .lines()
        .find(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains("dataplane"))
                .unwrap_or(false)
        })
        .map(str::to_owned)
        .expect("the supervised data plane");
    let ike_before = charon.ike_sa_line();
    Command::new("kill")
        .args(["-KILL", &dp_pid])
        .status()
        .unwrap();
    wait_for("traffic after the supervised restart", 20, || {
        pings(&lab, 1) == 1
    });
    assert_eq!(charon.ike_sa_line(), ike_before, "the same IKE SA");

    // Delete from the client: gone on both sides.
    assert!(charon
        .swanctl(&["--terminate", "--ike", "gw"])
        .contains("terminate completed successfully"));
    wait_for("roamgate to drop the IKE SA", 10, || {
        ike_view(&gw.socket)["ike_sas"]
            .as_array()
            .is_some_and(Vec::is_empty)
    });
    assert_eq!(pings(&lab, 1), 0, "no tunnel, no traffic");

    // Up again, then delete from roamgate (a clean shutdown deletes its IKE SAs).
    assert!(charon
        .swanctl(&["--initiate", "--child", "net"])
        .contains("initiate completed successfully"));
    assert_eq!(pings(&lab, 2), 2);
    let (stats, out) = gw.stop_with_output();
    assert!(
        out.contains("down: Deleted"),
        "roamgate deleted its IKE SA on shutdown:\n{out}"
    );
    wait_for("strongSwan to see the delete", 10, || {
        !charon.swanctl(&["--list-sas"]).contains("ESTABLISHED")
    });
    println!("gateway counters: {stats}");

    // The client's link carried IKE and ESP only (the pings and streams never went in clear).
    assert_only_ike_and_esp(&capture.finish(), "the client's link");
}

/// The control plane and the data plane as separate processes on the shared-memory channel:
/// strongSwan's tunnel comes up through them; the data plane is killed and restarted (it gets
/// the inbound SAs and policy back and every CHILD_SA is rekeyed — never an old outbound SA,
/// whose nonces are spent — and the IKE SA stays); the control plane is killed and restarted
/// (the data plane forwards on meanwhile and re-attaches).
#[test]
fn control_and_dataplane_processes_survive_each_others_restart() {
    if !strongswan_or_skip("strongswan_split", &[]) {
        return;
    }
    let dir = scratch("strongswan_split");
    let lab = rw_lab(&format!("rgs{}", std::process::id() % 100_000));
    let cfg = root().join("configs/interop-gw.yaml");
    let shm = dir.join("control.shm");
    let start_control = |name: &str| {
        NsProcess::spawn(
            &lab.ns("gw"),
            &[
                BIN.as_str(),
                "control",
                "--config",
                cfg.to_str().unwrap(),
                "--shm",
                shm.to_str().unwrap(),
                "--socket",
                dir.join(format!("{name}.sock")).to_str().unwrap(),
            ],
            name,
        )
    };
    let start_dataplane = |name: &str| {
        NsProcess::spawn(
            &lab.ns("gw"),
            &[
                BIN.as_str(),
                "dataplane",
                "--config",
                cfg.to_str().unwrap(),
                "--shm",
                shm.to_str().unwrap(),
                "--status-secs",
                "0",
                "--idle-sleep-us",
                "50",
            ],
            name,
        )
    };
    let ctl = start_control("control");
    wait_for("the control channel", 10, || shm.exists());
    let dp = start_dataplane("dataplane");
    // This client proposes only AES-CBC with HMAC-SHA2-256-128 for IKE (the other test
    // covers AES-GCM).
    let conf = swanctl_conf("rw-psk.swanctl.conf").replace(
        "proposals = aes128gcm16-prfsha256-x25519",
        "proposals = aes128-sha256-x25519",
    );
    assert!(conf.contains("aes128-sha256-x25519"));
    let charon = Charon::start_with(&lab.ns("rw"), &dir.join("rw"), &conf);
    std::thread::sleep(Duration::from_millis(500));
    let out = charon.swanctl(&["--initiate", "--child", "net"]);
    assert!(out.contains("initiate completed successfully"), "{out}");
    assert_eq!(pings(&lab, 3), 3, "through two processes");
    assert!(charon
        .swanctl(&["--list-sas"])
        .contains("AES_CBC-128/HMAC_SHA2_256_128"));
    let before = charon.ike_sa_line();

    // The data plane dies and comes back.
    dp.signal("KILL");
    drop(dp);
    let dp = start_dataplane("dataplane-2");
    wait_for("traffic after the data plane restart", 15, || {
        pings(&lab, 1) == 1
    });
    let v = ask(&dir.join("control.sock"), "ike");
    assert!(
        v["child_rekeys_by_us"].as_u64() >= Some(1),
        "the CHILD_SA was rekeyed: {v}"
    );
    assert_eq!(
        charon.ike_sa_line(),
        before,
        "same IKE SA, no new handshake"
    );

    // The control plane dies: the data plane forwards on; a new one takes over.
    ctl.signal("KILL");
    drop(ctl);
    assert_eq!(pings(&lab, 3), 3, "forwarding without a control plane");
    let ctl = start_control("control-2");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(pings(&lab, 2), 2);
    // What they said is in their logs (stderr).
    let (_, _, log) = dp.stop("TERM", Duration::from_secs(10));
    assert!(
        log.contains("again, keeping our SAs"),
        "the data plane re-attached:\n{log}"
    );
    let (_, _, log) = ctl.stop("TERM", Duration::from_secs(10));
    assert!(log.contains("re-attached with its SAs"), "{log}");
}
