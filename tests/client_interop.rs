//! `roamgate client` against Debian's strongSwan 5.9.8 as the road-warrior gateway
//! (kernel-libipsec), on the AF_XDP port in network namespaces (vendor-scripts/netns-lab.sh
//! cl-up): the client gets a virtual IP and its LAN host reaches the gateway's LAN host as
//! that address (the gateway routes nothing else back); ping, a UDP stream and an iperf3 TCP
//! run pass; a CHILD_SA rekey and an IKE rekey initiated by each side complete with traffic
//! after each; a delete from each side tears the tunnel down on both; a capture of the
//! internet link holds only IKE and ESP.
//!
//! Needs root (prints a SKIP line otherwise; CI runs it as root), strongSwan, iperf3, tshark.

use std::path::Path;
use std::time::Duration;

use roamgate_tests::netns::{Capture, DataplaneProcess, NsProcess};
use roamgate_tests::strongswan::{
    assert_only_ike_and_esp, ike_view, iperf_tcp, iperf_udp, pings, strongswan_or_skip,
    swanctl_conf, wait_for, Charon, ScriptLab,
};
use roamgate_tests::{root, scratch};

/// The binary under test: `ROAMGATE_BIN` (the release build `.ci/run` makes) or this build's.
static BIN: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| roamgate_tests::roamgate_bin(env!("CARGO_BIN_EXE_roamgate")));
const SERVER: &str = "10.9.0.10";

fn start_client(lab: &ScriptLab, cfg: &Path, dir: &Path, name: &str) -> DataplaneProcess {
    let shm = dir.join(format!("{name}.shm"));
    DataplaneProcess::start_sub(
        Path::new(BIN.as_str()),
        "client",
        &lab.ns("cl"),
        cfg,
        dir,
        name,
        &["--shm", shm.to_str().unwrap()],
    )
}

fn ike_sas(sock: &Path) -> usize {
    ike_view(sock)["ike_sas"].as_array().map_or(0, Vec::len)
}

#[test]
fn roamgate_client_against_a_strongswan_gateway() {
    if !strongswan_or_skip("client_interop", &["iperf3", "tshark"]) {
        return;
    }
    let dir = scratch("client_interop");
    let lab = ScriptLab::up(
        "cl-up",
        "cl-down",
        &format!("rgc{}", std::process::id() % 100_000),
    );
    let charon = Charon::start_with(
        &lab.ns("sgw"),
        &dir.join("sgw"),
        &swanctl_conf("gw-rw-psk.swanctl.conf"),
    );
    // Everything the client puts on the internet link, both runs of it.
    let capture = Capture::start(
        &lab.ns("sgw"),
        "eth0",
        "ip and not igmp",
        &dir.join("internet.pcap"),
    );
    // roamgate rekeys on its own too: the CHILD_SA every 8 s, the IKE SA every 14 s.
    let cfg = std::fs::read_to_string(root().join("configs/client.yaml"))
        .unwrap()
        .replace(
            "      request_vip: true",
            "      request_vip: true\n      child_rekey_secs: 8\n      ike_rekey_secs: 14",
        );
    let cfg_path = dir.join("client.yaml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let client = start_client(&lab, &cfg_path, &dir, "cl");
    let home = lab.ns("home");

    // Up, with a virtual IP that the LAN host's traffic wears inside the tunnel.
    wait_for("the client's tunnel", 20, || {
        ike_view(&client.socket)["virtual_ip"].as_str() == Some("10.99.0.1")
    });
    let sas = charon.swanctl(&["--list-sas"]);
    assert!(
        sas.contains("[10.99.0.1]") && sas.contains("INSTALLED"),
        "{sas}"
    );
    assert_eq!(pings(&home, SERVER, 5), 5, "ping through the tunnel");

    // The gateway rekeys the CHILD_SA and the IKE SA.
    assert!(charon
        .swanctl(&["--rekey", "--child", "net"])
        .contains("rekey completed successfully"));
    assert_eq!(pings(&home, SERVER, 2), 2);
    assert!(charon
        .swanctl(&["--rekey", "--ike", "rw"])
        .contains("rekey completed successfully"));
    assert_eq!(pings(&home, SERVER, 2), 2);
    // `swanctl --rekey` only queues the rekey in charon (vici's `rekey` replies "success" once
    // the job is queued), so the exchange may still be under way here: a CI run read the
    // client's view before charon's IKE rekey request had reached it.
    wait_for("the gateway's rekeys in the client's view", 10, || {
        let v = ike_view(&client.socket);
        v["child_rekeys_by_peer"].as_u64() >= Some(1) && v["ike_rekeys_by_peer"].as_u64() >= Some(1)
    });
    let v = ike_view(&client.socket);
    assert_eq!(v["virtual_ip"].as_str(), Some("10.99.0.1"), "kept: {v}");

    // A UDP stream and a TCP run from the client's LAN host, during which the client's own
    // rekey timers fire.
    let server = NsProcess::spawn(&lab.ns("srv"), &["iperf3", "-s", "-B", SERVER], "iperf3 -s");
    std::thread::sleep(Duration::from_millis(500));
    let (pk, lost) = iperf_udp(&home, SERVER, "20M", 4);
    println!("UDP stream through roamgate client <-> strongSwan: {pk} datagrams, {lost} lost");
    assert!(
        pk > 1000 && lost * 100 <= pk,
        "UDP stream: {pk} sent, {lost} lost"
    );
    let (bytes, bps) = iperf_tcp(&home, SERVER, 4);
    println!(
        "TCP through roamgate client <-> strongSwan: {:.3} Gbit/s",
        bps / 1e9
    );
    assert!(bytes > 1_000_000, "TCP: {bytes} bytes");
    drop(server);
    wait_for("the client's own rekeys", 30, || {
        let v = ike_view(&client.socket);
        v["child_rekeys_by_us"].as_u64() >= Some(1) && v["ike_rekeys_by_us"].as_u64() >= Some(1)
    });
    assert_eq!(
        pings(&home, SERVER, 3),
        3,
        "traffic after the client's rekeys"
    );
    let sas = charon.swanctl(&["--list-sas"]);
    assert!(
        sas.contains("ESTABLISHED") && sas.contains("INSTALLED"),
        "{sas}"
    );

    // Delete from the client (a clean shutdown deletes its IKE SA): gone on both sides.
    let (stats, out) = client.stop_with_output();
    assert!(out.contains("down: Deleted"), "the client deleted:\n{out}");
    wait_for("strongSwan to see the delete", 10, || {
        !charon.swanctl(&["--list-sas"]).contains("ESTABLISHED")
    });
    println!("client counters: {stats}");
    assert!(
        stats["traffic"]["masqueraded"].as_u64() > Some(1000),
        "{stats}"
    );

    // Up again; delete from the gateway: the client drops the IKE SA, its virtual IP and the
    // traffic.
    let client = start_client(&lab, &cfg_path, &dir, "cl2");
    wait_for("the tunnel again", 20, || {
        ike_view(&client.socket)["virtual_ip"].is_string()
    });
    assert_eq!(pings(&home, SERVER, 2), 2);
    assert!(charon
        .swanctl(&["--terminate", "--ike", "rw"])
        .contains("terminate completed successfully"));
    wait_for("the client to drop the IKE SA", 10, || {
        ike_sas(&client.socket) == 0
    });
    assert!(ike_view(&client.socket)["virtual_ip"].is_null());
    assert_eq!(pings(&home, SERVER, 1), 0, "no tunnel, no traffic");
    let stats = client.stop();
    assert!(
        stats["drops"]["policy_discard"].as_u64() >= Some(1),
        "{stats}"
    );

    // The internet link carried IKE and ESP only.
    assert_only_ike_and_esp(&capture.finish(), "the link");
}
