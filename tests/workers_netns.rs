//! `roamgate run` with `workers: 2` against strongSwan 5.9.8 (no RFC 9611): two road-warrior
//! tunnels (two IKE SAs of one charon, each with its virtual IP and one CHILD_SA), each
//! CHILD_SA on its own worker (the SPI allocator spreads them), and both workers carry
//! traffic. The veths have two queues each (vendor-scripts/netns-lab.sh rw2q-up); veth cannot
//! steer by SPI, so what lands on the other worker's queue is handed over in software
//! (`pipeline::handoff`), counted per worker in `roamgate stats`.
//!
//! A second case, two `roamgate run` sites with two workers each, negotiates per-core
//! CHILD_SAs (RFC 9611) and uses both at each end; a third, `roamgate client` with a virtual
//! IP and two workers, does the same with its LAN masqueraded by both workers.
//!
//! Needs root (prints a SKIP line otherwise; CI runs it as root), strongSwan, iperf3.
//! Runs in about 15 s (both cases; the per-core one about 6 s).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use roamgate_tests::netns::{in_ns, DataplaneProcess, NsProcess};
use roamgate_tests::strongswan::{
    ask, strongswan_or_skip, swanctl_conf, wait_for, Charon, ScriptLab,
};
use roamgate_tests::{root, scratch};

/// The two cases run one after the other (each brings up its own lab and gateways).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

static BIN: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| roamgate_tests::roamgate_bin(env!("CARGO_BIN_EXE_roamgate")));

/// The interop gateway with two workers and a second connection (its own identity and pool).
fn gateway_config() -> String {
    let base = std::fs::read_to_string(root().join("configs/interop-gw.yaml")).unwrap();
    assert!(base.contains("  workers: 1\n") && base.contains("      pool: 10.99.0.0/24"));
    // Both links resolve their next hops (ARP) rather than name them: with two workers each
    // resolves on its own and the answers, which reach one queue, are shared.
    let base = base
        .replace(", neighbor_mac: \"02:00:00:00:09:fe\"", "")
        .replace(", neighbor_mac: \"02:00:00:00:02:0a\"", "");
    assert!(!base.contains("neighbor_mac"), "{base}");
    // The LAN's clear traffic to the WAN's subnet bypasses the tunnels, masqueraded.
    let discard = "    - { src: 0.0.0.0/0, dst: 0.0.0.0/0, action: discard }\n";
    assert!(base.contains(discard));
    let base = base
        .replace("  workers: 1\n", "  workers: 2\n")
        .replace("      pool: 10.99.0.0/24", "      pool: 10.99.0.0/25")
        .replace(
            discard,
            &format!(
                "    - {{ src: 10.9.0.0/24, dst: 192.0.2.0/24, action: bypass }}\n{discard}  \
                 masquerade: {{ address: 192.0.2.1 }}\n"
            ),
        );
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
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
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

    // An IKE_SA_INIT larger than the link, in two IP fragments, its first fragment on one
    // queue (worker) and its second on the other, both ways round: the fragments meet on one
    // worker and the gateway answers (NO_PROPOSAL_CHOSEN: the request offers 3DES).
    for first_queue in [1, 0] {
        let answer = fragmented_ike_sa_init(&lab.ns("rw"), first_queue);
        assert!(
            answer.starts_with("answer notify 14"),
            "first fragment on queue {first_queue}: {answer}"
        );
    }

    // The masquerade of bypassed traffic on two workers: UDP flows from the LAN host to the
    // road warrior's namespace (an echo server), each from its own port, so that the LAN
    // veth's queues spread them and the answers come back on either queue. Every flow is
    // answered (an answer on the worker without its session is handed to the one with it).
    let answered = masqueraded_flows(&lab, 16);
    assert_eq!(
        answered,
        "answered 16 of 16",
        "masqueraded flows: {}",
        ask(&gw.socket, "stats")["per_worker"]
    );

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

/// Sends an IKE_SA_INIT request of about 2,100 bytes from 192.0.2.10:40500 (namespace `ns`)
/// to the gateway at 192.0.2.1:500 in two IPv4 fragments (scapy's), its first fragment into
/// eth0's tx queue `first_queue` and its second into the other: a veth delivers a frame on
/// the peer's rx queue of the same number, so to that worker. The queue is chosen by the CPU
/// that sends (a packet socket that bypasses the qdisc takes the tx queue of its CPU, with
/// no XPS map; this machine has no `tc` actions to set it). The answer comes back to a UDP
/// socket. Returns "answer notify N" with the answer's first notify type, or what went
/// wrong. Each of three tries is a new datagram (a new IP identification).
fn fragmented_ike_sa_init(ns: &str, first_queue: u8) -> String {
    let script = r#"
import os, socket, struct, sys
from scapy.all import IP, UDP, Raw, Ether, fragment
first_queue = int(sys.argv[1])
def payload(nxt, body):
    return struct.pack("!BBH", nxt, 0, 4 + len(body)) + body
spi_i = os.urandom(8)
# SA: one IKE proposal, 3DES alone (no gateway takes it); KE: group 19; Ni; a Vendor ID of
# 2,000 bytes to make the datagram longer than the link's 1,500.
transform = struct.pack("!BBHBBH", 0, 0, 8, 1, 0, 3)
proposal = struct.pack("!BBHBBBB", 0, 0, 8 + len(transform), 1, 1, 0, 1) + transform
body = payload(34, proposal)
body += payload(40, struct.pack("!HH", 19, 0) + bytes(64))
body += payload(43, os.urandom(32))
body += payload(0, b"roamgate-fragment-test" + bytes(1978))
ike = spi_i + bytes(8) + struct.pack("!BBBBII", 33, 0x20, 34, 0x08, 0, 28 + len(body)) + body
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.bind(("192.0.2.10", 40500))
rx.settimeout(2)
tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
tx.setsockopt(263, 20, 1)  # SOL_PACKET, PACKET_QDISC_BYPASS
tx.bind(("eth0", 0))
for attempt in range(3):
    dgram = IP(src="192.0.2.10", dst="192.0.2.1", id=0x4000 + attempt) / \
        UDP(sport=40500, dport=500) / Raw(ike)
    frags = fragment(dgram, fragsize=1400)
    assert len(frags) == 2, len(frags)
    for k, f in enumerate(frags):
        os.sched_setaffinity(0, {first_queue if k == 0 else 1 - first_queue})
        tx.send(bytes(Ether(dst="02:00:00:00:02:01", src="02:00:00:00:02:0a") / f))
    try:
        data, src = rx.recvfrom(65535)
    except socket.timeout:
        continue
    if data[:8] != spi_i or len(data) < 32:
        print("an answer to something else", data[:8].hex())
        break
    at, nxt = 28, data[16]
    while nxt != 0 and at + 4 <= len(data):
        n, ln = data[at], struct.unpack("!H", data[at + 2:at + 4])[0]
        if nxt == 41:
            print("answer notify", struct.unpack("!H", data[at + 6:at + 8])[0])
            break
        at, nxt = at + ln, n
    else:
        print("an answer without a notify")
    break
else:
    print("no answer in three tries")
"#;
    let q = first_queue.to_string();
    let out = in_ns(ns, &["python3", "-c", script, &q]);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// `n` UDP flows from 10.9.0.10 (the LAN host, ports 21000..) to an echo server at
/// 192.0.2.10:7007 (the road warrior's namespace) through the gateway's masquerade, three
/// datagrams each: "answered K of N", K the flows with at least one answer.
fn masqueraded_flows(lab: &ScriptLab, n: u32) -> String {
    let _ = in_ns(
        &lab.ns("lan"),
        &["ip", "route", "replace", "192.0.2.0/24", "via", "10.9.0.1"],
    );
    let echo = NsProcess::spawn(
        &lab.ns("rw"),
        &[
            "python3",
            "-c",
            "import socket\n\
             s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             s.bind(('192.0.2.10', 7007))\n\
             while True:\n    d, a = s.recvfrom(2048)\n    s.sendto(d, a)\n",
        ],
        "udp echo",
    );
    roamgate_tests::netns::wait_udp_bound(&lab.ns("rw"), 7007, Duration::from_secs(5));
    let script = format!(
        "import socket\n\
         socks = []\n\
         for i in range({n}):\n\
         \x20   s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         \x20   s.bind(('10.9.0.10', 21000 + i))\n\
         \x20   s.settimeout(0.5)\n\
         \x20   socks.append(s)\n\
         ok = 0\n\
         for i, s in enumerate(socks):\n\
         \x20   got = False\n\
         \x20   for k in range(3):\n\
         \x20       s.sendto(b'flow %d try %d' % (i, k), ('192.0.2.10', 7007))\n\
         \x20       try:\n\
         \x20           got = got or s.recv(2048).startswith(b'flow %d ' % i)\n\
         \x20       except socket.timeout:\n\
         \x20           pass\n\
         \x20   ok += got\n\
         print('answered %d of %d' % (ok, {n}))\n"
    );
    let out = in_ns(&lab.ns("lan"), &["python3", "-c", &script]);
    drop(echo);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// The SAs of direction `dir` (in/out) a gateway lists: (worker, packets) each.
fn sas_of(sock: &Path, dir: &str) -> Vec<(u64, u64)> {
    ask(sock, "sas")["sas"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter(|s| s["direction"] == dir)
                .map(|s| {
                    (
                        s["worker"].as_u64().unwrap_or(99),
                        s["packets"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The site in the rw namespace (`roamgate run`, two workers): its LAN 10.7.0.0/24 to the
/// gateway's 10.9.0.0/24, no virtual IP.
const SITE: &str = "gateway:
  name: site
  lan: { device: lan, address: 10.7.0.1, neighbor_mac: \"02:00:00:00:07:fe\" }
  wan: { device: eth0, address: 192.0.2.10, neighbor_mac: \"02:00:00:00:02:01\" }
  replay_window: 1024
  policies:
    - { src: 0.0.0.0/0, dst: 0.0.0.0/0, action: discard }
dataplane:
  port: af_xdp
  workers: 2
ike:
  connections:
    - name: gw
      local_id: site.roamgate.test
      remote_id: gw.roamgate.test
      psk: \"lab-psk-not-secret\"
      remote_addr: 192.0.2.1
      local_ts: [10.7.0.0/24]
      remote_ts: [10.9.0.0/24]
      ike_proposals: [aes128gcm16-prfsha256-x25519]
      esp_proposals: [aes128gcm16]
";

/// The gateway's connection for the site.
const GW_SITE: &str = "    - name: site
      local_id: gw.roamgate.test
      remote_id: site.roamgate.test
      psk: \"lab-psk-not-secret\"
      ike_proposals: [aes128gcm16-prfsha256-x25519]
      esp_proposals: [aes128gcm16]
      local_ts: [10.9.0.0/24]
      remote_ts: [10.7.0.0/24]
";

/// Eight UDP flows for 2 s between the site's LAN host and the gateway's (`reverse`: from
/// the gateway's side): (datagrams sent, lost).
fn udp_flows(lab: &ScriptLab, reverse: bool) -> (u64, u64) {
    let mut args = vec![
        "timeout",
        "30",
        "iperf3",
        "-c",
        "10.9.0.10",
        "-u",
        "-b",
        "4M",
        "-l",
        "1000",
        "-P",
        "8",
        "-t",
        "2",
        "-J",
    ];
    if reverse {
        args.push("-R");
    }
    let out = in_ns(&lab.ns("home"), &args);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 JSON");
    let sent = v["end"]["sum"]["packets"].as_u64().unwrap_or(0);
    let lost = v["end"]["sum"]["lost_packets"].as_u64().unwrap_or(u64::MAX);
    assert!(
        sent > 1000 && lost * 100 <= sent,
        "UDP (reverse {reverse}): {v}"
    );
    (sent, lost)
}

/// RFC 9611 between roamgate peers: a site (`roamgate run`, two workers) and the gateway
/// (`roamgate run`, two workers) in the two-queue lab with roamgate in the rw namespace
/// (vendor-scripts/netns-lab.sh rwcl2q-up). The site asks for one CHILD_SA per worker up
/// front; each worker seals the LAN flows it receives with its own outbound SA, so with
/// several flows (spread over the LAN veths' two queues) both outbound SAs carry traffic at
/// each end, and both inbound SAs, on different workers, open it. About 6 s.
#[test]
fn two_roamgate_sites_negotiate_a_child_sa_per_worker_and_use_both() {
    if !roamgate_tests::netns::root_or_skip("workers_netns per-core")
        || !roamgate_tests::have_tool("iperf3", &["--version"])
    {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = scratch("workers_netns_per_core");
    let lab = ScriptLab::up(
        "rwcl2q-up",
        "rw-down",
        &format!("rgp{}", std::process::id() % 100_000),
    );
    let gw = start(
        &lab,
        &dir,
        "run",
        "gw",
        &format!("{}{GW_SITE}", gateway_config()),
    );
    let site = start(&lab, &dir, "run", "site", SITE);
    per_core_flows(&lab, "site", &site, &gw);
    for (who, sock) in [("site", &site.socket), ("gateway", &gw.socket)] {
        let stats = ask(sock, "stats");
        println!("{who} per worker: {}", stats["per_worker"]);
        for w in stats["per_worker"].as_array().expect("per-worker counters") {
            assert!(w["drops"].get("no_sa").is_none(), "{who}: {stats}");
        }
    }
}

/// `roamgate client` (configs/client.yaml: a virtual IP, its LAN masqueraded to it) with two
/// workers against the gateway with two: per-core CHILD_SAs (RFC 9611) for the virtual IP,
/// each client worker masquerading from its own share of the ports; an answer the gateway
/// seals on the SA of the other client worker is handed over after decryption.
#[test]
fn a_roamgate_client_with_a_virtual_ip_negotiates_a_child_sa_per_worker_and_uses_both() {
    if !roamgate_tests::netns::root_or_skip("workers_netns per-core client")
        || !roamgate_tests::have_tool("iperf3", &["--version"])
    {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = scratch("workers_netns_per_core_client");
    let lab = ScriptLab::up(
        "rwcl2q-up",
        "rw-down",
        &format!("rgv{}", std::process::id() % 100_000),
    );
    let gw = start(&lab, &dir, "run", "gw", &gateway_config());
    let client = std::fs::read_to_string(root().join("configs/client.yaml")).unwrap();
    assert!(client.contains("  workers: 1\n") && client.contains("device: wan,"));
    let client = client
        .replace("  workers: 1\n", "  workers: 2\n")
        .replace("device: wan,", "device: eth0,");
    let cl = start(&lab, &dir, "client", "client", &client);
    per_core_flows(&lab, "client", &cl, &gw);
    let stats = ask(&cl.socket, "stats");
    println!("client per worker: {}", stats["per_worker"]);
    let mut handed = 0;
    for w in stats["per_worker"].as_array().expect("per-worker counters") {
        for r in ["no_sa", "nat_no_session", "nat_ports_exhausted"] {
            assert!(w["drops"].get(r).is_none(), "client: {r}: {stats}");
        }
        handed += w["traffic"]["vip_answers_handed_off"].as_u64().unwrap_or(0);
    }
    // Both client workers masqueraded flows and the gateway answered each flow on whichever
    // of its SAs its sending worker owns: some answers came to the other client worker.
    assert!(
        handed > 0,
        "no answer handed to its masquerade's worker: {stats}"
    );
    println!("per-core client: vip_answers_handed_off={handed}");
}

/// `roamgate <sub>` in the lab's namespace for `name` (`gw` in the gateway's, anything else
/// in the road warrior's), its file `<name>.yaml` holding `config`.
fn start(lab: &ScriptLab, dir: &Path, sub: &str, name: &str, config: &str) -> DataplaneProcess {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, config).unwrap();
    let ns = lab.ns(if name == "gw" { "gw" } else { "rw" });
    let shm = dir.join(format!("{name}.shm"));
    DataplaneProcess::start_sub(
        Path::new(BIN.as_str()),
        sub,
        &ns,
        &path,
        dir,
        name,
        &["--shm", shm.to_str().unwrap()],
    )
}

/// Two roamgate ends with two workers each and per-core CHILD_SAs: both get an outbound SA
/// on each worker; eight UDP flows each way between the LAN hosts; then every SA direction at
/// each end is on its own worker and carried traffic (each worker sealed with its own SA).
fn per_core_flows(lab: &ScriptLab, who: &str, end: &DataplaneProcess, gw: &DataplaneProcess) {
    for (w, sock) in [(who, &end.socket), ("gateway", &gw.socket)] {
        wait_for(&format!("{w}: an outbound SA per worker"), 20, || {
            let mut ws: Vec<u64> = sas_of(sock, "out").iter().map(|s| s.0).collect();
            ws.sort_unstable();
            ws == [0, 1]
        });
    }
    let server = NsProcess::spawn(
        &lab.ns("lan"),
        &["iperf3", "-s", "-B", "10.9.0.10"],
        "iperf3 -s",
    );
    std::thread::sleep(Duration::from_millis(500));
    let there = udp_flows(lab, false);
    let back = udp_flows(lab, true);
    drop(server);
    let (e_out, g_out) = (sas_of(&end.socket, "out"), sas_of(&gw.socket, "out"));
    let (e_in, g_in) = (sas_of(&end.socket, "in"), sas_of(&gw.socket, "in"));
    println!(
        "per-core {who}: UDP (sent, lost) there {there:?} back {back:?}; (worker, packets) {who} out {e_out:?} in {e_in:?}; gateway out {g_out:?} in {g_in:?}"
    );
    for (what, sas) in [
        (format!("{who} out"), &e_out),
        (format!("{who} in"), &e_in),
        ("gateway out".to_string(), &g_out),
        ("gateway in".to_string(), &g_in),
    ] {
        assert_eq!(sas.len(), 2, "{what}: {sas:?}");
        assert!(sas.iter().all(|s| s.1 > 0), "{what}: {sas:?}");
        assert_ne!(sas[0].0, sas[1].0, "{what} on different workers: {sas:?}");
    }
}
