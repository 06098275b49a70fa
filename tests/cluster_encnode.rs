//! An encryption node behind an edge, and edge filters, in network namespaces (issue 18 item
//! 7, M9).
//!
//! vendor-scripts/netns-lab.sh encnode-up: the cluster lab (a crypto node, the edges sharing
//! 203.0.113.1 behind a router, a LAN router and a server) plus an encryption node
//! (`roamgate encryption-node`, configs/cluster/encryption-node.yaml, id 9) on the LAN router.
//! The crypto node runs configs/cluster/crypto-node-filters.yaml: the lab client's identity
//! (rw.roamgate.test) gets rule 0 (its SAs on encryption node 9, its ESP passed by the edges),
//! rule 1 (clear traffic with 10.9.1.20 passes directly) and rule 2 (other clear traffic is
//! dropped). A `roamgate client` (its LAN host's flows to 10.9.1.0/24 leave in the clear,
//! masqueraded to its public address) connects through edge 0, and real traffic checks every
//! rule: pings and a UDP stream to 10.9.0.10 through the tunnel (decrypted and encrypted by
//! the encryption node; edge 0 holds no SA), pings to 10.9.1.20 answered in the clear, pings
//! to 10.9.1.30 dropped at the edge; edge 0's `roamgate stats` counts each rule's packets. A
//! capture on the client's link audits every ESP (SPI, sequence number) for repeats.
//!
//! Prints `cluster case=encnode ...`. Needs root (prints a SKIP line otherwise); run under the
//! shared lock:
//!   flock -o /tmp/roamgate-netns.lock cargo test -p roamgate --test cluster_encnode -- --nocapture
//! About 12 s. `ENCNODE_PPS` and `ENCNODE_SECS` change the stream (default 1000/s for 2 s).

use std::path::Path;
use std::time::{Duration, Instant};

use roamgate_tests::netns::{root_or_skip, wait_udp_bound, Capture, DataplaneProcess, NsProcess};
use roamgate_tests::strongswan::{ask, ike_view, pings, wait_for, ScriptLab};
use roamgate_tests::{roamgate_bin, root, scratch};

static BIN: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| roamgate_bin(env!("CARGO_BIN_EXE_roamgate")));
const SERVER: &str = "10.9.0.10";
const DIRECT: &str = "10.9.1.20";
const DROPPED: &str = "10.9.1.30";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// (inbound, outbound) negotiated SAs a data plane holds.
fn held(socket: &Path) -> (usize, usize) {
    let v = ask(socket, "sas");
    let sas = v["sas"].as_array().cloned().unwrap_or_default();
    let inbound = sas
        .iter()
        .filter(|sa| {
            sa["dir"]
                .as_str()
                .or(sa["direction"].as_str())
                .is_some_and(|d| d.to_ascii_lowercase().starts_with("in"))
        })
        .count();
    (inbound, sas.len() - inbound)
}

/// Packets each filter rule matched on a data plane (index -> packets).
fn filter_hits(socket: &Path) -> [u64; 3] {
    let v = ask(socket, "stats");
    let mut hits = [0u64; 3];
    for h in v["filter_hits"].as_array().cloned().unwrap_or_default() {
        if let (Some(i), Some(n)) = (h["rule"].as_u64(), h["packets"].as_u64()) {
            if let Some(slot) = hits.get_mut(i as usize) {
                *slot = n;
            }
        }
    }
    hits
}

/// Runs `cmd` (split on spaces) in `ns`; fails the test if it fails.
fn sh(ns: &str, cmd: &str) {
    let out = roamgate_tests::netns::in_ns(ns, &cmd.split(' ').collect::<Vec<_>>());
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Echo replies to `n` pings from `src` (an address of `ns`) to `dst`.
fn pings_from(ns: &str, src: &str, dst: &str, n: u32) -> u32 {
    let out = roamgate_tests::netns::in_ns(
        ns,
        &[
            "ping",
            "-I",
            src,
            "-c",
            &n.to_string(),
            "-i",
            "0.2",
            "-W",
            "1",
            dst,
        ],
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            l.split_once(" packets transmitted, ")?
                .1
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

#[test]
fn a_client_behind_an_edge_is_encrypted_by_the_encryption_node_and_the_filters_hold() {
    if !root_or_skip("cluster_encnode") {
        return;
    }
    let pps = env_u64("ENCNODE_PPS", 1000);
    let secs = env_u64("ENCNODE_SECS", 2);
    let t0 = Instant::now();
    let dir = scratch("cluster_encnode");
    let lab = ScriptLab::up(
        "encnode-up",
        "encnode-down",
        &format!("rgn{}", std::process::id() % 100_000),
    );
    let node_sock = dir.join("cn.sock");
    let node = NsProcess::spawn(
        &lab.ns("cn"),
        &[
            BIN.as_str(),
            "crypto-node",
            "--config",
            root()
                .join("configs/cluster/crypto-node-filters.yaml")
                .to_str()
                .unwrap(),
            "--socket",
            node_sock.to_str().unwrap(),
        ],
        "crypto-node",
    );
    wait_for("the crypto node's socket", 20, || node_sock.exists());
    let edge = DataplaneProcess::start_sub(
        Path::new(BIN.as_str()),
        "edge",
        &lab.ns("e0"),
        &root().join("configs/cluster/edge-a.yaml"),
        &dir,
        "edge-a",
        &["--shm", dir.join("edge-a.shm").to_str().unwrap()],
    );
    let enc = DataplaneProcess::start_sub(
        Path::new(BIN.as_str()),
        "encryption-node",
        &lab.ns("en"),
        &root().join("configs/cluster/encryption-node.yaml"),
        &dir,
        "enc",
        &["--shm", dir.join("enc.shm").to_str().unwrap()],
    );
    wait_for("edge 0 and encryption node 9 joined", 20, || {
        ask(&node_sock, "cluster")["edges"]
            .as_array()
            .is_some_and(|e| e.len() == 2)
    });

    let client_cfg = root().join("configs/cluster/client.yaml");
    let rtr = lab.ns("rtr");
    let pcap = dir.join("encnode.pcap");
    let cap = Capture::start(&rtr, "eth0", "esp or udp port 4500", &pcap);
    let t = Instant::now();
    let client = DataplaneProcess::start_sub(
        Path::new(BIN.as_str()),
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
    let up_ms = t.elapsed().as_millis();
    let home = lab.ns("home");
    wait_for("a ping through the encryption node", 20, || {
        pings(&home, SERVER, 1) == 1
    });

    // Encrypted path: a paced UDP stream to the server, and one back from it.
    let stream = root().join("tests/tools/udp_stream.py");
    let st = stream.to_str().unwrap();
    let srv = lab.ns("srv");
    let (secs_s, pps_s) = (secs.to_string(), pps.to_string());
    let recv = NsProcess::spawn(
        &srv,
        &["python3", st, "recv", "5001", &(secs + 2).to_string()],
        "udp recv",
    );
    let serve = NsProcess::spawn(
        &srv,
        &["python3", st, "serve", "5002", &pps_s, &secs_s],
        "udp serve",
    );
    wait_udp_bound(&srv, 5001, Duration::from_secs(20));
    wait_udp_bound(&srv, 5002, Duration::from_secs(20));
    let fetch = NsProcess::spawn(
        &home,
        &[
            "python3",
            st,
            "fetch",
            SERVER,
            "5002",
            &(secs + 2).to_string(),
        ],
        "udp fetch",
    );
    let send = NsProcess::spawn(
        &home,
        &["python3", st, "send", SERVER, "5001", &pps_s, &secs_s],
        "udp send",
    );
    let stream_t = Instant::now();
    std::thread::sleep(Duration::from_secs(secs + 3).saturating_sub(stream_t.elapsed()));
    let json = |p: NsProcess, what: &str| -> serde_json::Value {
        let (_, out, _) = p.stop("TERM", Duration::from_secs(5));
        serde_json::from_str(out.trim()).unwrap_or_else(|_| panic!("{what}: {out}"))
    };
    let sent = json(send, "sender");
    let got = json(recv, "receiver");
    let back_sent = json(serve, "server")["sent"].as_u64().unwrap_or(0);
    let back_got = json(fetch, "fetcher")["received"].as_u64().unwrap_or(0);
    let sent_n = sent["sent"].as_u64().unwrap_or(0);
    let recv_n = got["received"].as_u64().unwrap_or(0);

    // Clear traffic from the client's public address: the permitted host answers, the
    // other is dropped at the edge. (Sent by the router with the client's address for a
    // moment: a `roamgate client` under its control process does not masquerade bypassed
    // LAN traffic, `gateway.masquerade` is applied by `roamgate dataplane` alone.) The
    // client's own traffic has stopped; its IKE SA and the filter rules stay.
    let client_addr = "192.0.2.10";
    sh(&rtr, &format!("ip addr add {client_addr}/32 dev lo"));
    let direct = pings_from(&rtr, client_addr, DIRECT, 3);
    let dropped = pings_from(&rtr, client_addr, DROPPED, 2);
    sh(&rtr, &format!("ip addr del {client_addr}/32 dev lo"));
    assert_eq!(
        pings(&home, SERVER, 2),
        2,
        "the tunnel after the clear pings"
    );

    let edge_held = held(&edge.socket);
    let enc_held = held(&enc.socket);
    let hits = filter_hits(&edge.socket);
    let state = ask(&node_sock, "cluster");
    let hosts = state["hosts"].clone();
    let edge_unknown = ask(&edge.socket, "stats")["drops"]["unknown_spi"]
        .as_u64()
        .unwrap_or(0);
    let enc_stats = ask(&enc.socket, "stats");
    let client_stats = ask(&client.socket, "stats");
    let edge_stats = ask(&edge.socket, "stats");

    // The nonce audit: every ESP frame on the client's link, by (SPI, sequence number).
    let _ = cap.finish();
    let out = std::process::Command::new("tshark")
        .args([
            "-r",
            pcap.to_str().unwrap(),
            "-T",
            "fields",
            "-E",
            "separator=,",
            "-e",
            "ip.src",
            "-e",
            "esp.spi",
            "-e",
            "esp.sequence",
        ])
        .output()
        .expect("tshark -r");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut seen = std::collections::HashSet::new();
    let (mut esp, mut from_gw, mut dup_seq) = (0u64, 0u64, 0u64);
    for line in text.lines() {
        let f: Vec<&str> = line.split(',').collect();
        let (src, spi, seq) = (
            f[0],
            f.get(1).copied().unwrap_or(""),
            f.get(2).copied().unwrap_or(""),
        );
        if spi.is_empty() || seq.is_empty() {
            continue;
        }
        esp += 1;
        if src == "203.0.113.1" {
            from_gw += 1;
        }
        if !seen.insert((src.to_owned(), spi.to_owned(), seq.to_owned())) {
            dup_seq += 1;
        }
    }
    let _ = client.stop_with_output();
    let _ = enc.stop();
    let _ = edge.stop();
    let _ = node.stop("TERM", Duration::from_secs(5));
    println!(
        "cluster case=encnode up=yes up_ms={up_ms} sent={sent_n} received={recv_n} lost={} \
         back_sent={back_sent} back_received={back_got} \
         direct_pings={direct}/3 dropped_pings={dropped}/2 filter_hits={hits:?} \
         edge_sas={edge_held:?} enc_sas={enc_held:?} edge_unknown_spi={edge_unknown} \
         dup_seq={dup_seq} esp_audited={esp} esp_from_gw={from_gw} total_s={:.1}",
        sent_n.saturating_sub(recv_n),
        t0.elapsed().as_secs_f64()
    );
    println!("crypto node: hosts={hosts} filters={}", state["filters"]);
    println!("encryption node traffic: {}", enc_stats["traffic"]);
    println!(
        "client: traffic {} drops {}; edge 0: traffic {} drops {}",
        client_stats["traffic"], client_stats["drops"], edge_stats["traffic"], edge_stats["drops"]
    );

    assert!(sent_n >= pps * secs * 9 / 10, "sender sent {sent_n}");
    assert_eq!(recv_n, sent_n, "the stream through the encryption node");
    assert!(back_sent >= pps * secs * 9 / 10, "server sent {back_sent}");
    assert!(
        back_got + 5 >= back_sent,
        "the stream back through the encryption node: {back_got} of {back_sent}"
    );
    assert_eq!(edge_held, (0, 0), "edge 0 holds none of the client's SAs");
    assert_eq!(enc_held, (1, 1), "the encryption node holds both");
    assert_eq!(
        hosts[0]["edges"],
        serde_json::json!([9]),
        "the virtual IP is designated to the encryption node: {state}"
    );
    assert_eq!(direct, 3, "the permitted host answers in the clear");
    assert_eq!(dropped, 0, "the other host is dropped at the edge");
    // Rule 0: the client's ESP in and the encryption node's ESP out, through edge 0.
    assert!(
        hits[0] >= sent_n + back_got,
        "rule 0 (ESP passed): {hits:?}"
    );
    // Rule 1: 3 echo requests and 3 replies; rule 2: the 2 dropped requests.
    assert!(hits[1] >= 6, "rule 1 (direct): {hits:?}");
    assert!(hits[2] >= 2, "rule 2 (drop): {hits:?}");
    assert_eq!(edge_unknown, 0, "no ESP reported as unknown at the edge");
    assert!(
        from_gw >= back_got,
        "ESP from the encryption node: {from_gw}"
    );
    assert_eq!(dup_seq, 0, "an ESP (SPI, sequence number) was sent twice");
}
