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
//! Then, with the roamgate client still connected, Debian's strongSwan 5.9.8 (charon with
//! kernel-libipsec, tests/tools/strongswan/rw-psk.swanctl.conf: the same identity
//! rw.roamgate.test, so the same rules) connects from PFX-sw (198.51.100.10, its own access
//! network) through edge 0: rule 0 places its SAs on encryption node 9 too. libipsec sends
//! ESP in UDP 4500 (it fakes a NAT to get it), which the edge passes as it passes bare ESP.
//! Pings and a UDP stream each way to 10.9.0.10; edge 0 still holds no SA, the encryption
//! node holds strongSwan's (its SPIs), its virtual IP is designated to node 9, rule 0 counts
//! its packets, and a capture on its link audits every ESP (SPI, sequence number) for repeats.
//!
//! Prints `cluster case=encnode ...` and `cluster case=encnode-sw ...` (a SKIP line for
//! strongSwan alone when it is not installed). Needs root (prints a SKIP line otherwise); run
//! under the shared lock:
//!   flock -o /tmp/roamgate-netns.lock cargo test -p roamgate --test cluster_encnode -- --nocapture
//! About 20 s. `ENCNODE_PPS` and `ENCNODE_SECS` change the streams (default 1000/s for 2 s).

use std::path::Path;
use std::time::{Duration, Instant};

use roamgate_tests::netns::{
    esp_audit, root_or_skip, wait_udp_bound, Capture, DataplaneProcess, EspAudit, NsProcess,
};
use roamgate_tests::strongswan::{
    ask, ike_view, pings, strongswan_or_skip, swanctl_conf, swanctl_sas, wait_for, Charon,
    ScriptLab,
};
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

/// What the strongSwan host itself dropped (its namespace's counters): (UDP datagrams its
/// sockets' receive buffers overflowed: charon's ESP-in-UDP socket when charon is not
/// scheduled in time, or a receiver's; packets libipsec's TUN device dropped on their way to
/// charon). Not the gateway's: the capture shows every ESP frame reaching the link.
fn host_drops(ns: &str) -> (u64, u64) {
    let snmp = roamgate_tests::netns::in_ns(ns, &["cat", "/proc/net/snmp"]);
    let snmp = String::from_utf8_lossy(&snmp.stdout).into_owned();
    let udp: Vec<Vec<&str>> = snmp
        .lines()
        .filter(|l| l.starts_with("Udp: "))
        .map(|l| l.split_whitespace().collect())
        .collect();
    let rcvbuf = match udp.as_slice() {
        [names, values] => names
            .iter()
            .position(|n| *n == "RcvbufErrors")
            .and_then(|i| values.get(i)?.parse().ok())
            .expect("RcvbufErrors in /proc/net/snmp"),
        _ => panic!("no Udp counters in {ns}: {snmp}"),
    };
    // libipsec's TUN device: the one that is neither lo nor eth0.
    let out = roamgate_tests::netns::in_ns(
        ns,
        &[
            "sh",
            "-c",
            "for d in /sys/class/net/*; do case ${d##*/} in lo|eth0) ;; *) cat $d/statistics/tx_dropped ;; esac; done",
        ],
    );
    let tun: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert!(!tun.is_empty(), "libipsec's TUN device in {ns}");
    (rcvbuf, tun.iter().sum())
}

/// ESP frames of a capture carried in UDP (RFC 3948).
fn esp_in_udp(pcap: &Path) -> u64 {
    let out = std::process::Command::new("tshark")
        .args([
            "-r",
            pcap.to_str().unwrap(),
            "-Y",
            "udp && esp",
            "-T",
            "fields",
            "-e",
            "frame.number",
        ])
        .output()
        .expect("tshark -r");
    String::from_utf8_lossy(&out.stdout).lines().count() as u64
}

/// A paced UDP stream (`pps` datagrams a second for `secs` s) from namespace `from` to the
/// server's port `ports.0`, and one from the server's port `ports.1` back to `from`, at the
/// same time: (sent, received, sent back, received back).
fn two_way_stream(
    lab: &ScriptLab,
    from: &str,
    ports: (u16, u16),
    pps: u64,
    secs: u64,
) -> (u64, u64, u64, u64) {
    let stream = root().join("tests/tools/udp_stream.py");
    let st = stream.to_str().unwrap();
    let (srv, from) = (lab.ns("srv"), lab.ns(from));
    let (secs_s, pps_s) = (secs.to_string(), pps.to_string());
    let (p_in, p_out) = (ports.0.to_string(), ports.1.to_string());
    let recv = NsProcess::spawn(
        &srv,
        &["python3", st, "recv", &p_in, &(secs + 2).to_string()],
        "udp recv",
    );
    let serve = NsProcess::spawn(
        &srv,
        &["python3", st, "serve", &p_out, &pps_s, &secs_s],
        "udp serve",
    );
    wait_udp_bound(&srv, ports.0, Duration::from_secs(20));
    wait_udp_bound(&srv, ports.1, Duration::from_secs(20));
    let fetch = NsProcess::spawn(
        &from,
        &[
            "python3",
            st,
            "fetch",
            SERVER,
            &p_out,
            &(secs + 2).to_string(),
        ],
        "udp fetch",
    );
    let send = NsProcess::spawn(
        &from,
        &["python3", st, "send", SERVER, &p_in, &pps_s, &secs_s],
        "udp send",
    );
    let stream_t = Instant::now();
    std::thread::sleep(Duration::from_secs(secs + 3).saturating_sub(stream_t.elapsed()));
    let json = |p: NsProcess, what: &str| -> serde_json::Value {
        let (_, out, _) = p.stop("TERM", Duration::from_secs(5));
        serde_json::from_str(out.trim()).unwrap_or_else(|_| panic!("{what}: {out}"))
    };
    let sent = json(send, "sender")["sent"].as_u64().unwrap_or(0);
    let got = json(recv, "receiver");
    let back_sent = json(serve, "server")["sent"].as_u64().unwrap_or(0);
    let back = json(fetch, "fetcher");
    // Where datagrams went missing (a stall shows as one run of sequence numbers).
    for (what, v) in [("to the server", &got), ("back", &back)] {
        let missing = v["missing"].as_array().cloned().unwrap_or_default();
        if !missing.is_empty() {
            println!(
                "stream from {from} {what}: {} missing (sequence numbers {}..={}), \
                 receiver's socket drops {}, longest gap {} ms",
                missing.len(),
                missing[0],
                missing[missing.len() - 1],
                v["socket_drops"],
                v["longest_gap_ms"]
            );
        }
    }
    let got = got["received"].as_u64().unwrap_or(0);
    let back_got = back["received"].as_u64().unwrap_or(0);
    (sent, got, back_sent, back_got)
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
    let (sent_n, recv_n, back_sent, back_got) =
        two_way_stream(&lab, "home", (5001, 5002), pps, secs);

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
    let EspAudit {
        esp,
        from_gw,
        dup_seq,
        ..
    } = esp_audit(&pcap, "203.0.113.1");
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

    // strongSwan (kernel-libipsec) with the same identity from its own access network: the
    // filters place it on the encryption node too, its traffic takes the same path. The
    // roamgate client stays connected.
    if strongswan_or_skip("cluster_encnode strongswan", &[]) {
        let sw = lab.ns("sw");
        let sw_pcap = dir.join("encnode-sw.pcap");
        let sw_cap = Capture::start(&rtr, "eth1", "esp or udp port 4500", &sw_pcap);
        let hits0 = filter_hits(&edge.socket);
        let conf = swanctl_conf("rw-psk.swanctl.conf")
            .replace("remote_addrs = 192.0.2.1", "remote_addrs = 203.0.113.1");
        assert!(conf.contains("id = rw.roamgate.test"), "{conf}");
        let t = Instant::now();
        let charon = Charon::start_with(&sw, &dir.join("sw"), &conf);
        let out = charon.swanctl(&["--initiate", "--child", "net"]);
        assert!(out.contains("initiate completed successfully"), "{out}");
        let sw_up_ms = t.elapsed().as_millis();
        let sa = swanctl_sas(&charon.swanctl(&["--list-sas", "--raw"]))["gw"].clone();
        let vip = sa["local-vips"][0].as_str().unwrap_or("").to_owned();
        let child = sa["child-sas"]
            .as_object()
            .and_then(|c| c.values().next().cloned())
            .unwrap_or_default();
        // ESP in UDP (libipsec's default, raw_esp = no: it fakes a NAT so the gateway agrees).
        let encap = child["encap"].as_str() == Some("yes");
        let spi = |k: &str| {
            child[k]
                .as_str()
                .unwrap_or("")
                .trim_start_matches("0x")
                .to_ascii_lowercase()
        };
        let sw_spis = [spi("spi-in"), spi("spi-out")];
        // The first ping may race libipsec's TUN route.
        wait_for(
            "strongSwan's first ping through the encryption node",
            15,
            || pings(&sw, SERVER, 1) == 1,
        );
        let sw_pings = pings(&sw, SERVER, 3);
        let host0 = host_drops(&sw);
        let (sw_sent, sw_recv, sw_back_sent, sw_back_got) =
            two_way_stream(&lab, "sw", (5003, 5004), pps, secs);
        let sw_pings_after = pings(&sw, SERVER, 2);
        let host1 = host_drops(&sw);
        let sw_edge_held = held(&edge.socket);
        let sw_enc_held = held(&enc.socket);
        let enc_spis: Vec<String> = ask(&enc.socket, "sas")["sas"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|sa| sa["spi"].as_str().map(str::to_ascii_lowercase))
            .collect();
        let sw_hits = filter_hits(&edge.socket);
        let sw_edge_unknown = ask(&edge.socket, "stats")["drops"]["unknown_spi"]
            .as_u64()
            .unwrap_or(0);
        let sw_state = ask(&node_sock, "cluster");
        let sw_edges = sw_state["hosts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .find(|h| h["vip"].as_str() == Some(vip.as_str()))
            .map(|h| h["edges"].clone())
            .unwrap_or_default();
        let _ = sw_cap.finish();
        let EspAudit {
            esp: sw_esp,
            from_gw: sw_from_gw,
            dup_seq: sw_dup,
            ..
        } = esp_audit(&sw_pcap, "203.0.113.1");
        let esp_in_udp = esp_in_udp(&sw_pcap);
        charon.stop();
        let rule0 = sw_hits[0] - hits0[0];
        let (rcvbuf_drops, tun_drops) = (host1.0 - host0.0, host1.1 - host0.1);
        println!(
            "cluster case=encnode-sw up=yes up_ms={sw_up_ms} vip={vip} encap={encap} \
             pings={sw_pings}/3 sent={sw_sent} received={sw_recv} back_sent={sw_back_sent} \
             back_received={sw_back_got} pings_after={sw_pings_after}/2 \
             edge_sas={sw_edge_held:?} enc_sas={sw_enc_held:?} edges={sw_edges} \
             rule0_hits={rule0} edge_unknown_spi={sw_edge_unknown} dup_seq={sw_dup} \
             esp_audited={sw_esp} esp_in_udp={esp_in_udp} esp_from_gw={sw_from_gw} \
             host_rcvbuf_drops={rcvbuf_drops} host_tun_drops={tun_drops} total_s={:.1}",
            t0.elapsed().as_secs_f64()
        );
        println!("strongSwan's CHILD_SA: {child}");

        assert!(vip.starts_with("10.99.0.") && vip != "10.99.0.1", "{sa}");
        // The path this case adds: ESP in UDP through the edge (the roamgate client's is bare).
        assert!(
            encap && esp_in_udp == sw_esp,
            "strongSwan's ESP in UDP 4500: encap={encap}, {esp_in_udp} of {sw_esp}"
        );
        assert_eq!(
            sw_pings, 3,
            "strongSwan's pings through the encryption node"
        );
        assert_eq!(sw_pings_after, 2, "strongSwan's pings after its stream");
        assert!(sw_sent >= pps * secs * 9 / 10, "strongSwan sent {sw_sent}");
        // Datagrams strongSwan's host dropped itself (libipsec's TUN queue on the way out,
        // charon's socket on the way in: charon not scheduled for a while on a loaded
        // machine) are not the gateway's losses; everything else must arrive, and most of
        // the stream must have got through.
        assert!(
            sw_recv + tun_drops >= sw_sent && sw_recv * 2 >= sw_sent,
            "strongSwan's stream through the encryption node: {sw_recv} of {sw_sent} \
             ({tun_drops} dropped by libipsec's TUN device)"
        );
        assert!(
            sw_back_sent >= pps * secs * 9 / 10,
            "server sent {sw_back_sent}"
        );
        assert!(
            sw_back_got + rcvbuf_drops + 5 >= sw_back_sent && sw_back_got * 2 >= sw_back_sent,
            "the stream back to strongSwan: {sw_back_got} of {sw_back_sent} ({rcvbuf_drops} \
             dropped by full socket buffers on strongSwan's host)"
        );
        assert_eq!(
            sw_edge_held,
            (0, 0),
            "edge 0 holds none of strongSwan's SAs"
        );
        assert_eq!(
            sw_enc_held,
            (2, 2),
            "the encryption node holds the client's and strongSwan's"
        );
        for spi in &sw_spis {
            assert!(
                !spi.is_empty() && enc_spis.contains(spi),
                "strongSwan's SPI {spi} on the encryption node: {enc_spis:?}"
            );
        }
        assert_eq!(
            sw_edges,
            serde_json::json!([9]),
            "strongSwan's virtual IP is designated to the encryption node: {sw_state}"
        );
        assert!(
            rule0 >= sw_sent + sw_back_got,
            "rule 0 (ESP passed) for strongSwan: {hits0:?} -> {sw_hits:?}"
        );
        assert_eq!(sw_edge_unknown, 0, "no ESP reported as unknown at the edge");
        assert!(
            sw_esp >= sw_sent.saturating_sub(tun_drops) + sw_back_sent,
            "ESP audited on strongSwan's link: {sw_esp}"
        );
        // The gateway's side of the way back: every datagram the server sent reached
        // strongSwan's link as ESP (what its host then dropped is counted above).
        assert!(
            sw_from_gw >= sw_back_sent,
            "ESP from the encryption node to strongSwan: {sw_from_gw} for {sw_back_sent}"
        );
        assert_eq!(
            sw_dup, 0,
            "an ESP (SPI, sequence number) on strongSwan's link was sent twice"
        );
    }

    let _ = client.stop_with_output();
    let _ = enc.stop();
    let _ = edge.stop();
    let _ = node.stop("TERM", Duration::from_secs(5));
}
