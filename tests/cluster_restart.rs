//! The cluster's crypto node on a real 3-member etcd, killed under traffic (issue 18 item 4).
//!
//! vendor-scripts/netns-lab.sh cluster-up (as tests/cluster_move.rs): one crypto node in
//! PFX-cn, three edges sharing 203.0.113.1 behind a router, a LAN server, a `roamgate client`
//! with a LAN host. Here the crypto node keeps its SA repository in etcd: three members of
//! Debian's etcd run in the crypto node's namespace (loopback), started by the test.
//!
//! - `case=crypto-restart`: a paced UDP stream from the client's LAN host to the server runs
//!   while the crypto node gets SIGKILL and starts again on the same file. The tunnel stays
//!   (ESP never touches the crypto node), the restarted node recovers the IKE SA from etcd,
//!   the edge keeps its SAs (no SA sent again), and the client's IKE SA goes on: its IKE SA
//!   id is unchanged and it rekeys its CHILD_SA through the new node (`child_rekey_secs`)
//!   while its DPD requests (`dpd_secs`) are answered. Then Debian's strongSwan (a new client)
//!   connects and pings the server, when strongSwan is installed.
//! - `case=etcd-member-kill`: during a second stream, one etcd member gets SIGKILL; the node
//!   goes on writing through the others (its repository keeps growing: the store batches
//!   counter moves, nothing waits for the store at the end), the stream loses nothing, and
//!   the client's next CHILD_SA rekey succeeds.
//!
//! Prints `cluster case=crypto-restart ...` and `cluster case=etcd-member-kill ...`.
//! Needs root, etcd and a roamgate built with the `etcd` feature:
//!   cargo build -p roamgate --features etcd
//!   flock -o /tmp/roamgate-netns.lock cargo test -p roamgate --features etcd --test cluster_restart -- --nocapture
//! About 19 s. `CLUSTER_PPS` changes the streams' rate (default 1000/s), `CLUSTER_REKEY_SECS`
//! (6) the client's CHILD_SA rekey interval, `CLUSTER_RESTART_SECS` (4) and
//! `CLUSTER_MEMBER_SECS` (3) the two streams' lengths.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use roamgate_tests::etcd::LocalEtcd;
use roamgate_tests::netns::{in_ns, root_or_skip, wait_udp_bound, DataplaneProcess, NsProcess};
use roamgate_tests::strongswan::{
    ask, ike_view, pings, strongswan_or_skip, swanctl_conf, wait_for, Charon, ScriptLab,
};
use roamgate_tests::{root, scratch};

const SERVER: &str = "10.9.0.10";

fn bin() -> String {
    roamgate_tests::roamgate_bin(env!("CARGO_BIN_EXE_roamgate"))
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn start_edge(lab: &ScriptLab, n: usize, dir: &Path) -> DataplaneProcess {
    let name = ["edge-a", "edge-b", "edge-c"][n];
    let cfg = root().join(format!("configs/cluster/{name}.yaml"));
    let shm = dir.join(format!("{name}.shm"));
    DataplaneProcess::start_sub(
        Path::new(&bin()),
        "edge",
        &lab.ns(&format!("e{n}")),
        &cfg,
        dir,
        name,
        &["--shm", shm.to_str().unwrap()],
    )
}

fn start_node(lab: &ScriptLab, cfg: &Path, sock: &Path, tag: &str) -> NsProcess {
    let _ = std::fs::remove_file(sock);
    let node = NsProcess::spawn(
        &lab.ns("cn"),
        &[
            &bin(),
            "crypto-node",
            "--config",
            cfg.to_str().unwrap(),
            "--socket",
            sock.to_str().unwrap(),
        ],
        tag,
    );
    wait_for("the crypto node's socket", 30, || sock.exists());
    node
}

/// A paced UDP stream from the client's LAN host to the server: (sender, receiver).
fn stream(lab: &ScriptLab, pps: u64, secs: u64, port: &str) -> (NsProcess, NsProcess) {
    let tool = root().join("tests/tools/udp_stream.py");
    let recv = NsProcess::spawn(
        &lab.ns("srv"),
        &[
            "python3",
            tool.to_str().unwrap(),
            "recv",
            port,
            &(secs + 1).to_string(),
        ],
        "udp recv",
    );
    wait_udp_bound(
        &lab.ns("srv"),
        port.parse().expect("a port"),
        Duration::from_secs(20),
    );
    let send = NsProcess::spawn(
        &lab.ns("home"),
        &[
            "python3",
            tool.to_str().unwrap(),
            "send",
            SERVER,
            port,
            &pps.to_string(),
            &secs.to_string(),
        ],
        "udp send",
    );
    (send, recv)
}

/// (sent, received) once both ends finished (the receiver ends about 1 s after the stream).
fn stream_result(send: NsProcess, recv: NsProcess, started: Instant, secs: u64) -> (u64, u64) {
    let end = started + Duration::from_secs(secs + 2);
    if let Some(d) = end.checked_duration_since(Instant::now()) {
        std::thread::sleep(d);
    }
    let (_, sent_out, _) = send.stop("TERM", Duration::from_secs(30));
    let (_, recv_out, _) = recv.stop("TERM", Duration::from_secs(30));
    let sent: serde_json::Value =
        serde_json::from_str(sent_out.trim()).unwrap_or_else(|_| panic!("sender: {sent_out}"));
    let got: serde_json::Value =
        serde_json::from_str(recv_out.trim()).unwrap_or_else(|_| panic!("receiver: {recv_out}"));
    (
        sent["sent"].as_u64().unwrap_or(0),
        got["received"].as_u64().unwrap_or(0),
    )
}

/// The client's IKE SA id and its CHILD_SA SPIs (in, out).
fn client_sas(sock: &Path) -> (String, Vec<(String, String)>) {
    let v = ike_view(sock);
    let sa = &v["ike_sas"][0];
    let children = sa["children"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    (
                        c["spi_in"].as_str().unwrap_or("").to_owned(),
                        c["spi_out"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    (sa["ike_sa"].as_str().unwrap_or("").to_owned(), children)
}

#[test]
fn the_crypto_node_and_an_etcd_member_killed_under_traffic() {
    if !root_or_skip("cluster_restart") {
        return;
    }
    if !roamgate_tests::have_tool("etcd", &["--version"])
        || !roamgate_tests::have_tool("etcdctl", &["version"])
    {
        return;
    }
    let pps = env_u64("CLUSTER_PPS", 1000);
    // The client's CHILD_SA rekey interval: one rekey must come after the crypto node's
    // restart, the next after the etcd member's kill.
    let rekey = env_u64("CLUSTER_REKEY_SECS", 6);
    let secs1 = env_u64("CLUSTER_RESTART_SECS", 4);
    let secs2 = env_u64("CLUSTER_MEMBER_SECS", 3);
    let dir = scratch("cluster_restart");
    let lab = ScriptLab::up(
        "cluster-up",
        "cluster-down",
        &format!("rgr{}", std::process::id() % 100_000),
    );
    let cn = lab.ns("cn");
    assert!(in_ns(&cn, &["ip", "link", "set", "lo", "up"])
        .status
        .success());
    let mut etcd = LocalEtcd::start_in(&dir.join("etcd"), 3, None, Some(&cn))
        .expect("3 etcd members in the crypto node's namespace");

    // The lab's crypto node file with a store section on those members.
    let key = dir.join("cluster.key");
    std::fs::write(&key, "5a".repeat(32)).unwrap();
    let base = std::fs::read_to_string(root().join("configs/cluster/crypto-node.yaml")).unwrap();
    let cfg = dir.join("crypto-node.yaml");
    std::fs::write(
        &cfg,
        format!(
            "{base}\nstore:\n  cluster: lab\n  key_file: {}\n  etcd:\n    endpoints: [{}]\n",
            key.display(),
            etcd.endpoints().join(", ")
        ),
    )
    .unwrap();
    // The client: DPD every 2 s (its stream is one-way: DPD runs), a CHILD_SA rekey every
    // `rekey` s.
    let client_base = std::fs::read_to_string(root().join("configs/cluster/client.yaml")).unwrap();
    let client_cfg = dir.join("client.yaml");
    std::fs::write(
        &client_cfg,
        client_base.replace(
            "      esp_proposals: [aes128gcm16]",
            &format!(
                "      esp_proposals: [aes128gcm16]\n      dpd_secs: 2\n      child_rekey_secs: {rekey}"
            ),
        ),
    )
    .unwrap();

    let sock = dir.join("cn.sock");
    let node = start_node(&lab, &cfg, &sock, "crypto-node");
    let edges: Vec<DataplaneProcess> = (0..3).map(|n| start_edge(&lab, n, &dir)).collect();
    wait_for("three edges joined", 30, || {
        ask(&sock, "cluster")["edges"]
            .as_array()
            .is_some_and(|e| e.len() == 3)
    });
    let client = DataplaneProcess::start_sub(
        Path::new(&bin()),
        "client",
        &lab.ns("cl"),
        &client_cfg,
        &dir,
        "cl",
        &["--shm", dir.join("cl.shm").to_str().unwrap()],
    );
    wait_for("the client's tunnel", 30, || {
        ike_view(&client.socket)["virtual_ip"].as_str() == Some("10.99.0.1")
    });
    let home = lab.ns("home");
    wait_for("a ping through the edge", 20, || {
        pings(&home, SERVER, 1) == 1
    });
    let (ike_before, children_before) = client_sas(&client.socket);
    assert_eq!(children_before.len(), 1, "{children_before:?}");
    // The node's state view is rebuilt every 200 ms.
    wait_for("the node writes its repository", 5, || {
        ask(&sock, "cluster")["store_batches"].as_u64().unwrap_or(0) >= 1
    });

    // Case crypto-restart: SIGKILL the node 1 s into a `secs1` s stream, start it again 0.5 s
    // later.
    let secs = secs1;
    let started = Instant::now();
    let (send, recv) = stream(&lab, pps, secs, "5001");
    std::thread::sleep(Duration::from_secs(1));
    let (_, _, err1) = node.stop("KILL", Duration::from_secs(5));
    let killed_at = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let node = start_node(&lab, &cfg, &sock, "crypto-node (restarted)");
    wait_for("three edges back", 30, || {
        ask(&sock, "cluster")["edges"]
            .as_array()
            .is_some_and(|e| e.len() == 3)
    });
    let back_ms = killed_at.elapsed().as_millis();
    let (sent, got) = stream_result(send, recv, started, secs);
    let lost = sent.saturating_sub(got);
    let after = ask(&sock, "cluster");
    let node_ike = ask(&sock, "ike");
    // The rekey (`rekey` s after the tunnel came up) and DPD go through the new node.
    wait_for(
        "the client's CHILD_SA rekeyed through the new node",
        30,
        || {
            let (_, ch) = client_sas(&client.socket);
            !ch.is_empty() && ch.iter().all(|c| !children_before.contains(c))
        },
    );
    let (ike_after, children_after) = client_sas(&client.socket);
    let cview = ike_view(&client.socket);
    let rekeys = cview["child_rekeys_by_us"].as_u64().unwrap_or(0);
    assert_eq!(
        pings(&home, SERVER, 3),
        3,
        "traffic on the rekeyed CHILD_SA"
    );
    // A new client: strongSwan, when installed.
    let mut new_client = "skipped";
    if strongswan_or_skip("cluster_restart strongswan", &[]) {
        let sw = lab.ns("sw");
        let conf = swanctl_conf("rw-psk.swanctl.conf")
            .replace("remote_addrs = 192.0.2.1", "remote_addrs = 203.0.113.1");
        let charon = Charon::start_with(&sw, &dir.join("sw"), &conf);
        let out = charon.swanctl(&["--initiate", "--child", "net"]);
        assert!(out.contains("initiate completed successfully"), "{out}");
        let mut n = 0;
        let t = Instant::now();
        while n == 0 && t.elapsed() < Duration::from_secs(10) {
            n = pings(&sw, SERVER, 3);
        }
        assert!(n >= 2, "strongSwan's pings after the restart: {n}/3");
        new_client = "up";
        charon.stop();
    }
    println!(
        "cluster case=crypto-restart sent={sent} lost={lost} back_ms={back_ms} \
         ike_sa_same={} child_rekeyed={} client_rekeys={rekeys} edges_kept={} \
         new_client={new_client} node_ike_sas={}",
        ike_after == ike_before,
        children_after != children_before,
        after["edges_kept"],
        node_ike["ike_sas"].as_array().map_or(0, Vec::len),
    );
    assert!(
        err1.is_empty() || !err1.contains("panicked"),
        "the killed node: {err1}"
    );
    assert_eq!(
        ike_after, ike_before,
        "the client's IKE SA went on (no new one)"
    );
    assert_eq!(
        lost, 0,
        "the stream lost {lost} of {sent} across the restart"
    );
    assert!(sent >= pps * secs * 9 / 10, "sender sent {sent}");
    assert!(
        after["edges_kept"].as_u64().unwrap_or(0) >= 1,
        "the edge kept its SAs across the restart: {after}"
    );

    // Case etcd-member-kill: SIGKILL one member 1 s into a `secs2` s stream.
    let batches0 = ask(&sock, "cluster")["store_batches"].as_u64().unwrap_or(0);
    let secs = secs2;
    let started = Instant::now();
    let (send, recv) = stream(&lab, pps, secs, "5002");
    std::thread::sleep(Duration::from_secs(1));
    etcd.kill9(0).expect("SIGKILL of etcd member 1");
    // The node goes on writing: the next rekey (`rekey` s after the last, after this kill)
    // is written and answered.
    let (_, ch_before) = client_sas(&client.socket);
    let (sent, got) = stream_result(send, recv, started, secs);
    let lost = sent.saturating_sub(got);
    wait_for("a CHILD_SA rekey with one member down", 40, || {
        let (_, ch) = client_sas(&client.socket);
        !ch.is_empty() && ch.iter().all(|c| !ch_before.contains(c))
    });
    wait_for("nothing waits for the store", 10, || {
        ask(&sock, "cluster")["waiting_for_store"].as_u64() == Some(0)
    });
    let st = ask(&sock, "cluster");
    let batches1 = st["store_batches"].as_u64().unwrap_or(0);
    let pinged = pings(&home, SERVER, 3);
    println!(
        "cluster case=etcd-member-kill sent={sent} lost={lost} store_batches={} rekey=yes pings={pinged}/3",
        batches1 - batches0
    );
    assert_eq!(
        lost, 0,
        "the stream lost {lost} of {sent} with a member killed"
    );
    assert!(batches1 > batches0, "{st}");
    assert_eq!(pinged, 3);

    let _ = client.stop_with_output();
    for e in edges {
        let _ = e.stop();
    }
    let (_, _, nerr) = node.stop("TERM", Duration::from_secs(5));
    assert!(
        nerr.contains("recovered"),
        "the restarted node's log:\n{nerr}"
    );
    drop(etcd);
    let _: PathBuf = dir;
}
