//! Connections that follow a moving client across cluster edges (issue 21, M12-M14) in
//! network namespaces.
//!
//! vendor-scripts/netns-lab.sh mobnat-up: one crypto node (configs/cluster/mobnat-crypto-node.yaml)
//! and three edges (configs/cluster/mobnat-edge-{a,b,c}.yaml: `roamgate edge` with a `masq:`
//! section) behind a router that steers the shared public address 203.0.113.1 to one edge;
//! the edges' LAN ports share one L2 segment with the LAN router (10.8.0.0/24), the server
//! 10.9.0.10 (also 10.9.0.20, 10.9.0.30) behind it; etcd (started here, in the crypto node's
//! namespace on its management address, which the edges reach) holds the masquerade's
//! connection table. Edge a masquerades as 10.8.0.100, b as .101, c as .102 (addresses on no
//! interface: the edges answer ARP for the ones they serve). Two users: the `roamgate client`
//! (rw.roamgate.test, with its LAN host) and strongSwan 5.9.8 (sw.roamgate.test). Captures on
//! the server (`lan0`) and on the LAN segment (the router's `br0`) are audited at the end.
//!
//! Cases, one summary line each:
//! - `policy`: the two users probe allowed and denied destinations (TCP connects to
//!   10.9.0.20 and 10.9.0.30, whose rules differ per user) from two edges each (the router
//!   moves them); then the edges' files get a rule denying an established UDP flow of
//!   rw.roamgate.test and are reloaded (SIGHUP): the server's capture shows the flow stop
//!   within 1 s (`change_enforced_ms`) while the user's other traffic still passes.
//!   `mobile-nat case=policy probes=.. as_expected=.. change_enforced_ms=..`
//! - `sw-move`: strongSwan (MOBIKE; its own flows like the ones of `move`, to other server
//!   ports) starts at edge b from 198.51.100.10, then changes its own address twice
//!   (198.51.100.11, then .12: the new one added, the old one removed, so charon sends
//!   UPDATE_SA_ADDRESSES from the new address); the router steers each address to its own
//!   edge (`ip rule from ADDR`: .10 b, .11 c, .12 a). Audited as `move` from the server's
//!   capture, plus the edges the crypto node designated (b,c,a) and strongSwan's IKE SA
//!   (kept, at the last address). kernel-libipsec rekeys its CHILD_SA after each update,
//!   so its stall is bounded at 2 s (the goal 100 ms printed next to it).
//!   `mobile-nat case=sw-move moves=2 edges=b,c,a rst=0 same_src=yes stall_ms_max=..`
//! - `move`: the roamgate client's LAN host runs a long TCP transfer (iperf3), an idle TCP
//!   connection (one line before the moves, one after), a paced UDP stream to the server and
//!   one back from it; the router moves the client edge a -> b -> c. The server's capture:
//!   the same source address and port per connection throughout (`same_src`), no RST, the
//!   stall per move (largest gap between the server's arrivals of the transfer and of the
//!   UDP stream within 3 s after the move) and the UDP losses.
//!   `mobile-nat case=move moves=2 rst=0 same_src=yes stall_ms_max=.. udp_lost=..`
//! - `ham-kill`: with the client at edge c, edge a (the connections' home, HAM) is killed
//!   (SIGKILL of the processes this test started for it). Its heartbeats stop; after 300 ms
//!   its successor revokes its lease (`masq.liveness`) and takes 10.8.0.100
//!   (gratuitous ARP seen on the LAN segment, the router's neighbour entry moved) and the
//!   connections go on: no RST, the idle connection answers, the stall printed (goal <= 1 s).
//! - `blocks`: the audit that port blocks never overlap between nodes: every masqueraded
//!   connection of the run (the LAN capture says which edge sent its first packet: its home)
//!   grouped by (address, port block of 256): one node per block, each node on its own
//!   address, no (address, port, protocol) used towards two server endpoints.
//!
//! Needs root, etcd, iperf3, tshark and a roamgate built with the `etcd` feature (prints a
//! SKIP line without root or tools); run under the shared lock:
//!   cargo build --release -p roamgate --features etcd
//!   ROAMGATE_BIN=target/release/roamgate flock -o /tmp/roamgate-netns.lock \
//!     cargo test -p roamgate --features roamgate/etcd --test mobile_nat -- --nocapture
//! `MOBNAT_CASES` (`policy,sw-move,move,ham-kill`) which cases run (`blocks` audits whatever
//! ran; `ham-kill` runs on the connections of `move`). `MOBNAT_SECS` (8) is the transfers'
//! length (the run: 60; the moves at 0.8 s and 1.6 s, the kill at 2.4 s, or at 20 %,
//! 35 % and 50 % of a run of 12 s or more; strongSwan's moves at 1 s and 3.5 s, or 20 % and
//! 50 %), `MOBNAT_PPS` (200) the UDP streams' rate, `MOBNAT_TCP_RATE` (20M) iperf3's pacing,
//! `MOBNAT_ETCD_MEMBERS` (1; 3 as cluster_store) the etcd members, `MOBNAT_NODE_TTL` (2, the
//! edges' files) the node lease (s) in the test's copies of the files (1 works with
//! LocalEtcd's short raft timings), `MOBNAT_LIVENESS=0` takes the heartbeats out of the
//! copies (a dead HAM is then noticed at its lease's end), `MOBNAT_TRACE` prints the stages.
//! The default run takes about 32 s (sw-move: 11 s of it).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use roamgate_tests::etcd::LocalEtcd;
use roamgate_tests::netns::{
    children_of, in_ns, root_or_skip, sh, wait_udp_bound, Capture, DataplaneProcess, NsProcess,
};
use roamgate_tests::strongswan::{
    ask, designated_edge, ike_view, strongswan_or_skip, swanctl_conf, swanctl_sas, wait_for,
    Charon, ScriptLab,
};
use roamgate_tests::{env_u64, have_tool, root, scratch, tshark_fields, unix_ns};

const SERVER: &str = "10.9.0.10";
const NAMES: [&str; 3] = ["edge-a", "edge-b", "edge-c"];
/// Each edge's masquerading address (its `masq.addresses`).
const MASQ: [&str; 3] = ["10.8.0.100", "10.8.0.101", "10.8.0.102"];
/// Each edge's LAN MAC (netns-lab.sh mobnat-up).
const EDGE_MAC: [&str; 3] = [
    "02:00:00:00:82:00",
    "02:00:00:00:82:01",
    "02:00:00:00:82:02",
];
/// The roamgate client's virtual IP (the first of its pool).
const RW_VIP: &str = "10.99.0.1";
/// The server ports of one client's flows (iperf3's server, the UDP stream to the server,
/// the one back from it): the roamgate client's (case move) and strongSwan's (case sw-move)
/// differ, so that each audit finds its own in the server's capture.
#[derive(Clone, Copy, Debug)]
struct Ports {
    iperf: u16,
    udp: u16,
    back: u16,
}
const RW_PORTS: Ports = Ports {
    iperf: 5201,
    udp: 5003,
    back: 5004,
};
const SW_PORTS: Ports = Ports {
    iperf: 5202,
    udp: 5006,
    back: 5007,
};
/// A TCP probe's timeout (s): what a denied one waits.
const PROBE_SECS: f64 = 0.7;
/// The largest stall per move asserted (ms). The goal is 100 ms: the figure is
/// printed against it; the bound leaves room for a loaded CI machine.
const MOVE_STALL_BOUND_MS: f64 = 500.0;
/// The way back (server -> client, through the HAM) after the HAM's death waits for the
/// HAM's heartbeats to be missed for `dead_after_ms` (300 in the edges' files), its lease to
/// be revoked by its successor, the takeover and the gratuitous ARP: bounded by that plus
/// 1 s (the goal, 1 s, is printed beside the figure; the bound leaves room for a
/// loaded CI machine). Without heartbeats (`MOBNAT_LIVENESS=0`: the line taken out of the
/// test's copies of the files) the node lease must end first (`node_ttl_s: 2`,
/// `MOBNAT_NODE_TTL`): the lease plus 1 s.
fn kill_back_bound_ms() -> f64 {
    kill_detect_ms() as f64 + 1e3
}

/// How long after the HAM's death its successor acts: the heartbeats' `dead_after_ms`, or
/// the node lease without them.
fn kill_detect_ms() -> u64 {
    if liveness() {
        DEAD_AFTER_MS
    } else {
        node_ttl_s() * 1000
    }
}

/// The edges' `masq.liveness.dead_after_ms` (configs/cluster/mobnat-edge-*.yaml).
const DEAD_AFTER_MS: u64 = 300;

/// Whether the edges send heartbeats (`MOBNAT_LIVENESS`, default 1).
fn liveness() -> bool {
    env_u64("MOBNAT_LIVENESS", 1) != 0
}

/// The edges' node lease (s): the files' 2, or `MOBNAT_NODE_TTL`.
fn node_ttl_s() -> u64 {
    env_u64("MOBNAT_NODE_TTL", 2)
}

fn bin() -> String {
    roamgate_tests::roamgate_bin(env!("CARGO_BIN_EXE_roamgate"))
}

fn tool() -> String {
    root()
        .join("tests/tools/mobnat.py")
        .to_str()
        .unwrap()
        .to_owned()
}

fn stream_tool() -> String {
    root()
        .join("tests/tools/udp_stream.py")
        .to_str()
        .unwrap()
        .to_owned()
}

/// The lab and every process the test started in it. Fields drop in order: the processes,
/// then etcd, then the namespaces.
struct Mobnat {
    client: Option<DataplaneProcess>,
    edges: Vec<Option<DataplaneProcess>>,
    node: Option<NsProcess>,
    etcd: LocalEtcd,
    lab: ScriptLab,
    dir: PathBuf,
    node_sock: PathBuf,
    /// The test's copies of the edges' files (the etcd endpoints filled in).
    edge_cfgs: Vec<PathBuf>,
}

impl Drop for Mobnat {
    /// Stops every process (also when the test failed) and keeps what each said in the
    /// scratch directory (`<name>.log`).
    fn drop(&mut self) {
        let mut procs: Vec<(String, NsProcess)> = Vec::new();
        if let Some(c) = self.client.take() {
            procs.push(("cl".into(), c.proc));
        }
        for (n, e) in self.edges.iter_mut().enumerate() {
            if let Some(e) = e.take() {
                procs.push((NAMES[n].into(), e.proc));
            }
        }
        if let Some(n) = self.node.take() {
            procs.push(("crypto-node".into(), n));
        }
        for (name, p) in procs {
            // `roamgate edge` and `client` supervise children (edge-link, the data plane):
            // those still alive after their parent ended are killed by pid.
            let kids: Vec<String> = p
                .child
                .as_ref()
                .map(|c| children_of(c.id()))
                .unwrap_or_default();
            let (_, out, err) = p.stop("TERM", Duration::from_secs(10));
            for k in &kids {
                // Only if the pid is still a roamgate (not a pid reused since).
                let cmd = std::fs::read(format!("/proc/{k}/cmdline")).unwrap_or_default();
                if !String::from_utf8_lossy(&cmd).contains("roamgate") {
                    continue;
                }
                let _ = std::process::Command::new("kill")
                    .args(["-9", k])
                    .stderr(std::process::Stdio::null())
                    .status();
            }
            let _ = std::fs::write(self.dir.join(format!("{name}.log")), out + "\n" + &err);
        }
    }
}

impl Mobnat {
    fn ns(&self, n: &str) -> String {
        self.lab.ns(n)
    }

    /// The masq coordinator's node records in etcd (keys only: the values are sealed).
    fn live_nodes(&self) -> Vec<String> {
        self.etcd
            .etcdctl(&[
                "get",
                "--prefix",
                "--keys-only",
                "/roamgate/mobnat/masq/nodes/",
            ])
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn keys(&self, prefix: &str) -> usize {
        self.etcd
            .etcdctl(&[
                "get",
                "--prefix",
                "--keys-only",
                &format!("/roamgate/mobnat/masq/{prefix}"),
            ])
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| !l.is_empty())
                    .count()
            })
            .unwrap_or(0)
    }
}

fn start_edge(ns: &str, cfg: &Path, dir: &Path, name: &str) -> DataplaneProcess {
    let shm = dir.join(format!("{name}.shm"));
    DataplaneProcess::start_sub(
        Path::new(&bin()),
        "edge",
        ns,
        cfg,
        dir,
        name,
        &["--shm", shm.to_str().unwrap()],
    )
}

fn up() -> Mobnat {
    let dir = scratch("mobile_nat");
    let lab = ScriptLab::up(
        "mobnat-up",
        "mobnat-down",
        &format!("rgn{}", std::process::id() % 100_000),
    );
    let cn = lab.ns("cn");
    let members = env_u64("MOBNAT_ETCD_MEMBERS", 1) as usize;
    let etcd = LocalEtcd::start_at(&dir.join("etcd"), members, None, Some(&cn), "169.254.80.1")
        .expect("etcd in the crypto node's namespace, on its management address");
    let endpoints = etcd.endpoints().join(", ");
    // The edges' files with this run's etcd; the cluster key next to them.
    let key = dir.join("mobnat-cluster.key");
    std::fs::copy(root().join("configs/cluster/mobnat-cluster.key"), &key)
        .expect("configs/cluster/mobnat-cluster.key");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let mut edge_cfgs = Vec::new();
    for name in NAMES {
        let file = format!("mobnat-{name}.yaml");
        let text = std::fs::read_to_string(root().join("configs/cluster").join(&file)).unwrap();
        let lab_ep = "http://169.254.80.1:2379";
        assert!(text.contains(lab_ep), "{file} names the lab's etcd");
        let ttl = "node_ttl_s: 2\n";
        assert!(
            text.contains(ttl),
            "{file}: the node lease the test expects"
        );
        let alive = format!("dead_after_ms: {DEAD_AFTER_MS} }}");
        assert!(
            text.contains(&alive),
            "{file}: the heartbeats the test expects ({alive})"
        );
        let mut text = text
            .replace(lab_ep, &endpoints)
            .replace(ttl, &format!("node_ttl_s: {}\n", node_ttl_s()));
        if !liveness() {
            text = text
                .lines()
                .filter(|l| !l.trim_start().starts_with("liveness:"))
                .map(|l| format!("{l}\n"))
                .collect();
        }
        let path = dir.join(&file);
        std::fs::write(&path, text).unwrap();
        edge_cfgs.push(path);
    }
    let node_sock = dir.join("cn.sock");
    let node = NsProcess::spawn(
        &cn,
        &[
            &bin(),
            "crypto-node",
            "--config",
            root()
                .join("configs/cluster/mobnat-crypto-node.yaml")
                .to_str()
                .unwrap(),
            "--socket",
            node_sock.to_str().unwrap(),
        ],
        "crypto-node",
    );
    wait_for("the crypto node's socket", 20, || node_sock.exists());
    let edges = (0..3)
        .map(|n| {
            Some(start_edge(
                &lab.ns(&format!("e{n}")),
                &edge_cfgs[n],
                &dir,
                NAMES[n],
            ))
        })
        .collect();
    let m = Mobnat {
        client: None,
        edges,
        node: Some(node),
        etcd,
        lab,
        dir,
        node_sock,
        edge_cfgs,
    };
    wait_for("three edges joined", 20, || {
        ask(&m.node_sock, "cluster")["edges"]
            .as_array()
            .is_some_and(|e| e.len() == 3)
    });
    wait_for("three masquerade nodes in etcd", 20, || {
        m.live_nodes().len() == 3
    });
    m
}

/// TCP probes (connect and one echoed line, `timeout` s each, all at once) from `ns`:
/// destination -> reached.
fn probe(ns: &str, timeout: f64, targets: &[&str]) -> BTreeMap<String, bool> {
    let t = timeout.to_string();
    let tool = tool();
    let mut args = vec!["python3", tool.as_str(), "probe", t.as_str()];
    args.extend(targets);
    let out = in_ns(ns, &args);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "probe from {ns}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    targets
        .iter()
        .map(|d| ((*d).to_owned(), v[*d].as_bool().unwrap_or(false)))
        .collect()
}

/// Ten new UDP connections from `ns` to the server (for the blocks audit).
fn burst(ns: &str) {
    let tool = tool();
    let out = in_ns(ns, &["python3", &tool, "burst", SERVER, "5009", "10"]);
    assert!(out.status.success(), "burst from {ns}");
}

/// Moves the path of the router's clients to edge `n`: the main table (the roamgate client)
/// or table 101 (strongSwan, `ip rule from 198.51.100.10`).
fn steer(m: &Mobnat, table: Option<u32>, n: usize) {
    let t = table.map(|t| format!(" table {t}")).unwrap_or_default();
    sh(
        &m.ns("rtr"),
        &format!("ip route replace 203.0.113.1/32 dev p{n}{t}"),
    );
}

/// Waits until the crypto node designates edge `n` for `vip` (the client's ESP reached it;
/// `nudge` makes some), at most 5 s; whether it did.
fn wait_designated(m: &Mobnat, vip: &str, n: usize, mut nudge: impl FnMut()) -> bool {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        if designated_edge(&m.node_sock, vip) == Some(n as u64) {
            return true;
        }
        nudge();
    }
    false
}

/// Every `masq*` counter of a data plane's stats (wherever it sits in the JSON), for the log.
fn masq_counters(v: &serde_json::Value) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    fn walk(v: &serde_json::Value, out: &mut BTreeMap<String, serde_json::Value>) {
        if let Some(o) = v.as_object() {
            for (k, x) in o {
                if k.starts_with("masq") && !x.is_object() {
                    out.insert(k.clone(), x.clone());
                } else {
                    walk(x, out);
                }
            }
        }
    }
    walk(v, &mut out);
    out
}

/// One frame of the server's capture.
#[derive(Clone, Debug)]
struct Pkt {
    t: f64,
    src: String,
    dst: String,
    tcp: bool,
    sport: u16,
    dport: u16,
    rst: bool,
    /// TCP: carries data not sent before (no retransmission).
    new_data: bool,
    /// iperf3's TEST_END (if sent to iperf3's port): from here its server closes the data
    /// connection, with a reset when a block is still in flight (iperf3's teardown, not the
    /// masquerade's).
    iperf_end: bool,
}

/// When iperf3's client (to its server's `port`) ended its test (s; infinite if it did not).
fn iperf_end(pkts: &[Pkt], port: u16) -> f64 {
    pkts.iter()
        .filter(|p| p.iperf_end && p.dport == port)
        .map(|p| p.t)
        .fold(f64::INFINITY, f64::min)
}

/// A reset the masquerade could have caused: any but iperf3's server (on `port`) resetting
/// its connections after the client's TEST_END (counted apart, `rst_teardown`).
fn counted_rst(p: &Pkt, end: f64, port: u16) -> bool {
    p.rst && !(p.sport == port && p.t >= end)
}

fn server_packets(pcap: &Path) -> Vec<Pkt> {
    tshark_fields(
        pcap,
        "tcp or udp",
        &[
            "frame.time_epoch",
            "ip.src",
            "ip.dst",
            "tcp.srcport",
            "tcp.dstport",
            "udp.srcport",
            "udp.dstport",
            "tcp.flags.reset",
            "tcp.len",
            "tcp.analysis.retransmission",
            "tcp.analysis.fast_retransmission",
            "tcp.analysis.spurious_retransmission",
            "tcp.payload",
        ],
    )
    .into_iter()
    .filter_map(|f| {
        let g = |i: usize| f.get(i).map(String::as_str).unwrap_or("");
        let tcp = !g(3).is_empty();
        let (sp, dp) = if tcp { (g(3), g(4)) } else { (g(5), g(6)) };
        Some(Pkt {
            t: g(0).parse().ok()?,
            src: g(1).to_owned(),
            dst: g(2).to_owned(),
            tcp,
            sport: sp.parse().ok()?,
            dport: dp.parse().ok()?,
            rst: matches!(g(7), "1" | "True" | "true"),
            // A segment with data that tshark does not mark as sent before.
            new_data: tcp
                && g(8).parse::<u32>().is_ok_and(|l| l > 0)
                && g(9).is_empty()
                && g(10).is_empty()
                && g(11).is_empty(),
            // iperf3's client ends the test: TEST_END (4), one byte on its control connection.
            iperf_end: tcp && g(8) == "1" && g(12) == "04",
        })
    })
    .collect()
}

/// The largest gap (ms) between consecutive arrival times in `ts` (sorted) that ends after
/// `at` and starts before `at + within` s: how long the flow stopped around an event (a gap
/// across the next event counts for both); infinite when nothing arrived after `at`.
fn stall_ms(ts: &[f64], at: f64, within: f64) -> f64 {
    if !ts.iter().any(|t| *t > at) {
        return f64::INFINITY;
    }
    ts.windows(2)
        .filter(|w| w[1] >= at && w[0] <= at + within)
        .map(|w| (w[1] - w[0]) * 1e3)
        .fold(0.0, f64::max)
}

/// With `MOBNAT_TRACE` set: when each stage ended (s since the test started), on stderr.
fn stage(what: &str) {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let t = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    if std::env::var_os("MOBNAT_TRACE").is_some() {
        eprintln!("mobile-nat stage {t:6.2} {what}");
    }
}

fn secs_f(ns: u128) -> f64 {
    ns as f64 / 1e9
}

#[test]
fn connections_follow_the_client_across_edges() {
    if !root_or_skip("mobile_nat") {
        return;
    }
    for (t, probe) in [
        ("etcd", "--version"),
        ("etcdctl", "version"),
        ("iperf3", "--version"),
        ("tshark", "--version"),
    ] {
        if !have_tool(t, &[probe]) {
            return;
        }
    }
    let started = Instant::now();
    stage("start");
    let cases = Cases::from_env();
    let secs = env_u64("MOBNAT_SECS", 8);
    let pps = env_u64("MOBNAT_PPS", 200);
    let tcp_rate = std::env::var("MOBNAT_TCP_RATE").unwrap_or_else(|_| "20M".into());
    let mut m = up();
    let dir = m.dir.clone();
    let (home, srv, lr) = (m.ns("home"), m.ns("srv"), m.ns("lr"));
    // The routers know every edge's MAC as in cluster_move (no ARP wait at a move).
    for n in 0..3 {
        sh(
            &m.ns("rtr"),
            &format!(
                "ip neigh replace 203.0.113.1 lladdr 02:00:00:00:03:0{n} dev p{n} nud permanent"
            ),
        );
    }
    // The server's echo service (every address it holds) and the captures of the whole run.
    stage("lab up");
    let listen = NsProcess::spawn(&srv, &["python3", &tool(), "listen", "7001"], "echo");
    let srv_pcap = dir.join("server.pcap");
    let srv_cap = Capture::start_snap(&srv, "lan0", "tcp or udp", &srv_pcap, Some(128));
    let lan_pcap = dir.join("lan.pcap");
    // What the audits read: ARP (the takeover) and what leaves the edges masqueraded.
    let lan_cap = Capture::start_snap(
        &lr,
        "br0",
        "arp or src host 10.8.0.100 or src host 10.8.0.101 or src host 10.8.0.102",
        &lan_pcap,
        Some(128),
    );

    stage("echo started");
    let client = DataplaneProcess::start_sub(
        Path::new(&bin()),
        "client",
        &m.ns("cl"),
        &root().join("configs/cluster/client.yaml"),
        &dir,
        "cl",
        &["--shm", dir.join("cl.shm").to_str().unwrap()],
    );
    let client_sock = client.socket.clone();
    m.client = Some(client);
    wait_for("the client's tunnel through edge a", 30, || {
        ike_view(&client_sock)["virtual_ip"].as_str() == Some(RW_VIP)
    });
    let up_ms = started.elapsed().as_millis();
    let first = Instant::now();
    let t = Instant::now();
    let mut ok = false;
    while t.elapsed() < Duration::from_secs(20) {
        if probe(&home, 1.0, &["10.9.0.10:7001"])["10.9.0.10:7001"] {
            ok = true;
            break;
        }
    }
    assert!(
        ok,
        "no TCP connection from the client's LAN host through edge a's masquerade in 20 s \
         (edge a's counters: {:?}; logs in {})",
        m.edges[0].as_ref().map(|e| masq_counters(&e.stats())),
        dir.display()
    );
    println!(
        "mobile-nat setup up_ms={up_ms} first_connection_ms={} etcd_members={} node_ttl_s={} \
         liveness={} masq_nodes={:?}",
        first.elapsed().as_millis(),
        env_u64("MOBNAT_ETCD_MEMBERS", 1),
        node_ttl_s(),
        if liveness() { "heartbeats" } else { "lease" },
        m.live_nodes()
    );

    // ---- case policy ----
    let t_policy = Instant::now();
    let policy = cases.policy.then(|| policy_case(&mut m, &home));
    let policy_secs = t_policy.elapsed().as_secs_f64();

    // ---- case sw-move ----
    let t_sw = Instant::now();
    let sw_move = (cases.sw_move && strongswan_or_skip("mobile_nat sw-move", &[]))
        .then(|| sw_move_case(&m, &srv, secs, pps, &tcp_rate));
    let sw_secs = t_sw.elapsed().as_secs_f64();
    let t_move = Instant::now();

    // ---- case move (and ham-kill on the same connections) ----
    let mv = cases.moves.then(|| {
        steer(&m, None, 0);
        assert!(
            wait_designated(&m, RW_VIP, 0, || {
                let _ = probe(&home, 0.3, &["10.9.0.10:7001"]);
            }),
            "the client back at edge a before the moves"
        );
        move_case(&mut m, &home, &srv, secs, pps, &tcp_rate, cases.kill)
    });

    let move_secs = t_move.elapsed().as_secs_f64();
    let t_audit = Instant::now();
    let _ = listen.stop("TERM", Duration::from_secs(2));
    srv_cap.stop();
    lan_cap.stop();

    // ---- audits ----
    stage("captures stopped");
    let pkts = server_packets(&srv_pcap);
    let masq: BTreeSet<&str> = MASQ.iter().copied().collect();
    let counters: Vec<_> = m
        .edges
        .iter()
        .map(|e| e.as_ref().map(|e| masq_counters(&e.stats())))
        .collect();
    let mut verdicts: Vec<String> = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            verdicts.push(what);
        }
    };
    if let Some(mut policy) = policy {
        policy.audit(&pkts);
        println!(
            "mobile-nat case=policy users=2 edges=rw:a,b/sw:{} probes={} as_expected={} \
             change_enforced_ms={} flow_before_change={} other_traffic_after_change={} \
             restarted_by_reload={} unexpected={:?}",
            policy.sw_edges,
            policy.probes,
            policy.as_expected,
            policy
                .enforced_ms
                .map_or("none".into(), |v| format!("{v:.0}")),
            policy.before,
            policy.other_after,
            policy.restarted,
            policy.unexpected
        );
        check(
            policy.restarted == 0,
            format!(
                "policy: the reload (SIGHUP) restarted processes of {} edges",
                policy.restarted
            ),
        );
        check(
            policy.as_expected == policy.probes,
            format!(
                "policy: per-user probes not as expected: {:?}",
                policy.unexpected
            ),
        );
        check(
            policy.before,
            "policy: the flow the rule change stops did not pass before it".into(),
        );
        check(
            policy.enforced_ms.is_some_and(|ms| ms <= 1000.0),
            format!(
                "policy: the rule change did not stop the established flow within 1 s: {:?} ms",
                policy.enforced_ms
            ),
        );
        check(
            policy.other_after,
            "policy: the user's other traffic did not pass after the change".into(),
        );
    }
    if let Some(mv) = &mv {
        let mv_report = move_audit(&pkts, mv, &masq);
        let stall_max = mv_report.stalls.iter().map(Stall::max).fold(0.0, f64::max);
        let stalls: Vec<String> = mv_report.stalls.iter().map(ToString::to_string).collect();
        println!(
            "mobile-nat case=move moves=2 rst={} rst_teardown={} same_src={} stall_ms_max={:.0} (goal 100, \
             bound {MOVE_STALL_BOUND_MS}) stall_ms={} \
             udp_sent={} udp_lost={} udp_back_lost={} tcp_bytes={} iperf_error={} idle={} \
             sources={:?} conn_keys={}",
            mv_report.rst,
            mv_report.rst_teardown,
            if mv_report.same_src { "yes" } else { "no" },
            stall_max,
            stalls.join(","),
            mv.udp_sent,
            mv.udp_sent.saturating_sub(mv.udp_received),
            mv.back_lost,
            mv.tcp_bytes,
            mv.iperf_error.as_deref().unwrap_or("none"),
            mv.idle,
            mv_report.sources,
            m.keys("conn/"),
        );
        check(
            mv_report.rst == 0,
            format!(
                "move: {} RST seen by the server during the moves",
                mv_report.rst
            ),
        );
        check(
            mv_report.same_src,
            format!(
                "move: not one source (address, port) per connection: {:?}",
                mv_report.sources
            ),
        );
        check(
            stall_max <= MOVE_STALL_BOUND_MS,
            format!(
                "move: a stall of {stall_max:.0} ms (bound {MOVE_STALL_BOUND_MS} ms): {}",
                stalls.join(",")
            ),
        );
        check(mv.idle, "move: the idle connection's first line".into());
        check(
            mv.iperf_error.is_none(),
            format!("move: iperf3: {:?}", mv.iperf_error),
        );
        check(
            mv.udp_received >= mv.udp_sent * 9 / 10,
            format!(
                "move: the UDP stream did not pass: {}/{}",
                mv.udp_received, mv.udp_sent
            ),
        );
        if let Some(kill_at) = mv.kill_at {
            let kill_report = kill_audit(&m, &pkts, &lan_pcap, mv, kill_at);
            println!(
                "mobile-nat case=ham-kill rst={} stall_ms={} (goal 1000; bound of the way back \
                 {}) garp_from={} garp_ms={} router_neigh={} \
                 idle_after_kill={} tcp_after_kill={} udp_after_kill={} back_after_kill={} \
                 nodes_after={:?}",
                kill_report.rst,
                kill_report.stall,
                kill_back_bound_ms(),
                kill_report.garp_from.as_deref().unwrap_or("none"),
                kill_report
                    .garp_ms
                    .map_or("none".into(), |v| format!("{v:.0}")),
                kill_report.neigh,
                mv.idle_second,
                kill_report.tcp_after,
                kill_report.udp_after,
                mv.back_after_kill,
                kill_report.nodes_after,
            );
            check(
                kill_report.rst == 0,
                format!("ham-kill: {} RST after the HAM was killed", kill_report.rst),
            );
            check(
                kill_report.stall.back_ms <= kill_back_bound_ms(),
                format!(
                    "ham-kill: the way back stopped {:.0} ms (bound {} ms)",
                    kill_report.stall.back_ms,
                    kill_back_bound_ms()
                ),
            );
            check(
                kill_report.garp_from.is_some(),
                "ham-kill: no gratuitous ARP for 10.8.0.100 from a live edge after edge a died"
                    .into(),
            );
            check(
                kill_report.tcp_after && kill_report.udp_after,
                "ham-kill: the transfer or the UDP stream stopped after the HAM died".into(),
            );
            check(
                mv.back_after_kill > 0,
                "ham-kill: nothing of the stream back (through the HAM's successor) arrived \
                 after the takeover"
                    .into(),
            );
        }
        check(
            mv.idle_second,
            "move: the idle connection did not answer after the moves (and the HAM's death)".into(),
        );
    }
    if let Some(sw) = &sw_move {
        let mv = &sw.mv;
        let r = move_audit(&pkts, mv, &masq);
        let stall_max = r.stalls.iter().map(Stall::max).fold(0.0, f64::max);
        let stalls: Vec<String> = r.stalls.iter().map(ToString::to_string).collect();
        let edges: Vec<&str> = sw
            .edges
            .iter()
            .map(|e| {
                e.and_then(|n| NAMES.get(n as usize))
                    .map_or("none", |n| &n[5..])
            })
            .collect();
        // The stream back after the last move (its stall bound past it) went on.
        let last_move = mv.moves_at.last().copied().unwrap_or(mv.start);
        let back_after = mv.back_after(last_move + (SW_MOVE_STALL_BOUND_MS * 1e6) as u128);
        println!(
            "mobile-nat case=sw-move moves=2 edges={} addrs={} rst={} rst_teardown={} same_src={} \
             stall_ms_max={:.0} (goal 100, bound {SW_MOVE_STALL_BOUND_MS}) stall_ms={} \
             udp_sent={} udp_lost={} udp_back_lost={} back_after_moves={back_after} tcp_bytes={} \
             iperf_error={} idle={}/{} ike_sa_kept={} local_host={} child_sa={:?}->{:?} \
             sources={:?}",
            edges.join(","),
            SW_ADDRS.map(|a| a.0).join(","),
            r.rst,
            r.rst_teardown,
            if r.same_src { "yes" } else { "no" },
            stall_max,
            stalls.join(","),
            mv.udp_sent,
            mv.udp_sent.saturating_sub(mv.udp_received),
            mv.back_lost,
            mv.tcp_bytes,
            mv.iperf_error.as_deref().unwrap_or("none"),
            mv.idle,
            mv.idle_second,
            if sw.ike_kept { "yes" } else { "no" },
            sw.local_host,
            sw.child_before,
            sw.child_after,
            r.sources,
        );
        check(
            sw.edges == [Some(1), Some(2), Some(0)],
            format!("sw-move: the crypto node designated edges {edges:?}, not b,c,a"),
        );
        check(
            sw.ike_kept && sw.local_host == SW_ADDRS[2].0,
            format!(
                "sw-move: strongSwan's IKE SA kept ({}) and at its last address ({})",
                sw.ike_kept, sw.local_host
            ),
        );
        check(
            r.rst == 0,
            format!("sw-move: {} RST seen by the server during the moves", r.rst),
        );
        check(
            r.same_src,
            format!(
                "sw-move: not one source (address, port) per connection: {:?}",
                r.sources
            ),
        );
        check(
            stall_max <= SW_MOVE_STALL_BOUND_MS,
            format!(
                "sw-move: a stall of {stall_max:.0} ms (bound {SW_MOVE_STALL_BOUND_MS} ms): {}",
                stalls.join(",")
            ),
        );
        check(
            back_after > 0,
            "sw-move: the stream back did not go on after the last move".into(),
        );
        check(
            mv.idle && mv.idle_second,
            "sw-move: the idle connection's lines before and after the moves".into(),
        );
        check(
            mv.iperf_error.is_none(),
            format!("sw-move: iperf3: {:?}", mv.iperf_error),
        );
    }
    stage("server audits done");
    let blocks = blocks_audit(&pkts, &lan_pcap, &masq);
    println!(
        "mobile-nat case=blocks conns={} blocks={} overlap={} foreign_address={} reused={} \
         per_node={:?}",
        blocks.conns, blocks.blocks, blocks.overlap, blocks.foreign, blocks.reused, blocks.per_node
    );
    check(
        blocks.overlap == 0,
        format!(
            "blocks: {} port blocks shared between nodes",
            blocks.overlap
        ),
    );
    check(
        blocks.foreign == 0,
        format!(
            "blocks: {} connections allocated on another node's address",
            blocks.foreign
        ),
    );
    check(
        blocks.reused == 0,
        format!(
            "blocks: {} masquerading ports towards two servers",
            blocks.reused
        ),
    );
    // The policy case's bursts make the connections the audit needs.
    check(
        !cases.policy || blocks.conns >= 10,
        format!("blocks: the audit saw only {} connections", blocks.conns),
    );
    stage("blocks audit done");
    println!("edges' masq counters: {counters:?}");
    println!(
        "mobile-nat total_secs={:.1} setup_secs={:.1} policy_secs={policy_secs:.1} \
         sw_move_secs={sw_secs:.1} move_secs={move_secs:.1} audit_secs={:.1} (logs and captures in {})",
        started.elapsed().as_secs_f64(),
        (t_policy - started).as_secs_f64(),
        t_audit.elapsed().as_secs_f64(),
        dir.display()
    );
    assert!(verdicts.is_empty(), "failed: {verdicts:#?}");
}

/// Which cases run (`MOBNAT_CASES`, comma separated, default `policy,sw-move,move,ham-kill`;
/// `blocks` audits whatever ran).
struct Cases {
    policy: bool,
    sw_move: bool,
    moves: bool,
    kill: bool,
}

impl Cases {
    fn from_env() -> Cases {
        let v =
            std::env::var("MOBNAT_CASES").unwrap_or_else(|_| "policy,sw-move,move,ham-kill".into());
        let has = |c: &str| v.split(',').any(|x| x.trim() == c);
        Cases {
            policy: has("policy"),
            sw_move: has("sw-move"),
            moves: has("move") || has("ham-kill"),
            kill: has("ham-kill"),
        }
    }
}

struct Policy {
    changed_at: u128,
    probes: usize,
    as_expected: usize,
    unexpected: Vec<String>,
    sw_edges: String,
    enforced_ms: Option<f64>,
    before: bool,
    other_after: bool,
    /// Edges whose edge-link or data plane was restarted by the reload (SIGHUP).
    restarted: usize,
}

/// Case policy (see the file's header). The roamgate client starts at edge a, strongSwan at
/// edge b; they probe, move to b and c, probe again; then the rule change.
fn policy_case(m: &mut Mobnat, home: &str) -> Policy {
    let (rtr, sw) = (m.ns("rtr"), m.ns("sw"));
    let mut probes = 0;
    let mut as_expected = 0;
    let mut unexpected = Vec::new();
    let targets = ["10.9.0.10:7001", "10.9.0.20:7001", "10.9.0.30:7001"];
    // What each user may reach (configs/cluster/mobnat-edge-*.yaml `masq.access`): the
    // group lab (10.9.0.0/24) for both, but 10.9.0.30 is denied to sw.roamgate.test.
    let want = |user: &str, dst: &str| !(user == "sw" && dst == "10.9.0.30:7001");
    let mut check = |user: &str, edge: usize, got: &BTreeMap<String, bool>| {
        for (d, ok) in got {
            probes += 1;
            if *ok == want(user, d) {
                as_expected += 1;
            } else {
                unexpected.push(format!("{user}@{}:{d}={ok}", NAMES[edge]));
            }
        }
    };
    // strongSwan's path: table 101, edge b.
    sh(&rtr, "ip route add 203.0.113.1/32 dev p1 table 101");
    sh(&rtr, "ip rule add from 198.51.100.10 table 101");
    let mut charon = None;
    let mut sw_edges = "skipped".to_owned();
    if strongswan_or_skip("mobile_nat policy", &[]) {
        let c = Charon::start_with(
            &sw,
            &m.dir.join("sw"),
            &swanctl_conf("mobnat-sw.swanctl.conf"),
        );
        let out = c.swanctl(&["--initiate", "--child", "net"]);
        assert!(out.contains("initiate completed successfully"), "{out}");
        charon = Some(c);
    }
    let sw_vip = || -> Option<String> {
        ask(&m.node_sock, "cluster")["hosts"]
            .as_array()?
            .iter()
            .filter_map(|h| h["vip"].as_str())
            .find(|v| v.starts_with("10.98."))
            .map(str::to_owned)
    };
    stage("strongSwan up");
    // Round 1: rw at a, sw at b (through a TCP connection that must come first).
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10)
        && charon.is_some()
        && !probe(&sw, 1.0, &["10.9.0.10:7001"])["10.9.0.10:7001"]
    {}
    // Both users at once (a denied probe takes its whole timeout).
    let sw_ns = charon.is_some().then_some(sw.as_str());
    let both = |targets: &[&str]| {
        std::thread::scope(|sc| {
            let r = sc.spawn(|| {
                let r = probe(home, PROBE_SECS, targets);
                burst(home);
                r
            });
            let s = sw_ns.map(|ns| {
                let r = probe(ns, PROBE_SECS, targets);
                burst(ns);
                r
            });
            (r.join().expect("rw's probes"), s)
        })
    };
    let (rw1, sw1) = both(&targets);
    check("rw", 0, &rw1);
    if let Some(sw1) = sw1 {
        check("sw", 1, &sw1);
    }
    stage("round 1 probed");
    // Round 2: rw at b, sw at c.
    steer(m, None, 1);
    if charon.is_some() {
        steer(m, Some(101), 2);
    }
    let sw_vip = charon
        .is_some()
        .then(|| sw_vip().expect("strongSwan's virtual IP in the crypto node's view"));
    let mm: &Mobnat = m;
    let (moved_rw, moved_sw) = std::thread::scope(|sc| {
        let r = sc.spawn(|| {
            wait_designated(mm, RW_VIP, 1, || {
                let _ = probe(home, 0.3, &["10.9.0.10:7001"]);
            })
        });
        let s = sw_vip.as_deref().map(|vip| {
            wait_designated(mm, vip, 2, || {
                let _ = probe(&sw, 0.3, &["10.9.0.10:7001"]);
            })
        });
        (r.join().expect("rw's move"), s)
    });
    assert!(moved_rw, "the roamgate client reached edge b");
    if let Some(moved) = moved_sw {
        assert!(moved, "strongSwan reached edge c");
        sw_edges = "b,c".into();
    }
    let (rw2, sw2) = both(&targets);
    check("rw", 1, &rw2);
    if let Some(sw2) = sw2 {
        check("sw", 2, &sw2);
    }
    stage("round 2 probed");
    // strongSwan leaves while the rule change runs (its IKE delete is no part of it).
    let charon_stop = charon.take().map(|c| std::thread::spawn(move || c.stop()));
    let _ = in_ns(
        &rtr,
        &["ip", "rule", "del", "from", "198.51.100.10", "table", "101"],
    );

    // The rule change on an established flow: a 100 packets/s UDP stream of rw to the
    // server's port 5005; 1 s in, the edges' files deny it and are reloaded.
    let srv = m.ns("srv");
    let st = stream_tool();
    let flow_secs = 2.5f64;
    stage("charon stopped");
    let recv = NsProcess::spawn(
        &srv,
        &[
            "env",
            "UDP_STREAM_IDLE_EXIT=0.5",
            "python3",
            &st,
            "recv",
            "5005",
            &(flow_secs + 1.0).to_string(),
        ],
        "udp recv 5005",
    );
    std::thread::sleep(Duration::from_millis(300));
    let send = NsProcess::spawn(
        home,
        &[
            "python3",
            &st,
            "send",
            SERVER,
            "5005",
            "100",
            &flow_secs.to_string(),
        ],
        "udp send 5005",
    );
    std::thread::sleep(Duration::from_millis(1000));
    // The processes each edge's supervisor runs (edge-link, the data plane): a reload
    // keeps them.
    let kids = |m: &Mobnat| -> Vec<Vec<String>> {
        m.edges
            .iter()
            .flatten()
            .map(|e| {
                let mut k = e
                    .proc
                    .child
                    .as_ref()
                    .map(|c| children_of(c.id()))
                    .unwrap_or_default();
                k.sort();
                k
            })
            .collect()
    };
    let kids_before = kids(m);
    for cfg in &m.edge_cfgs {
        let text = std::fs::read_to_string(cfg).unwrap();
        let anchor = "      rw.roamgate.test: { groups: [lab] }\n";
        assert!(
            text.contains(anchor),
            "{}: rw.roamgate.test's policy",
            cfg.display()
        );
        std::fs::write(
            cfg,
            text.replace(
                anchor,
                "      rw.roamgate.test:\n        rules: [ { dst: 10.9.0.10/32, proto: udp, ports: 5005, action: deny } ]\n        groups: [lab]\n",
            ),
        )
        .unwrap();
    }
    let changed_at = unix_ns();
    for e in m.edges.iter().flatten() {
        e.proc.signal("HUP");
    }
    let _ = send.wait(Duration::from_secs_f64(flow_secs + 5.0));
    let (_, recv_out, _) = recv.wait(Duration::from_secs_f64(flow_secs + 5.0));
    stage("flow done");
    let other_after = probe(home, 1.0, &["10.9.0.10:7001"])["10.9.0.10:7001"];
    let kids_after = kids(m);
    if let Some(j) = charon_stop {
        let _ = j.join();
    }
    let restarted = kids_before
        .iter()
        .zip(&kids_after)
        .filter(|(a, b)| a != b)
        .count();
    let _ = std::fs::write(m.dir.join("policy-recv.json"), recv_out);
    // The server's arrivals of the flow are audited from its capture at the end.
    Policy {
        probes,
        as_expected,
        unexpected,
        sw_edges,
        changed_at,
        enforced_ms: None,
        before: false,
        other_after,
        restarted,
    }
}

impl Policy {
    /// From the server's capture: the flow's last arrival after the change (ms after it;
    /// `None` if it never stopped before the capture ended... or never came) and whether it
    /// passed before.
    fn audit(&mut self, pkts: &[Pkt]) {
        let at = secs_f(self.changed_at);
        let flow: Vec<f64> = pkts
            .iter()
            .filter(|p| !p.tcp && p.dport == 5005 && p.dst == SERVER)
            .map(|p| p.t)
            .collect();
        self.before = flow.iter().any(|t| *t < at);
        let last = flow.iter().copied().fold(f64::MIN, f64::max);
        // The stream ran 2 s past the change: arrivals until its end mean not enforced.
        self.enforced_ms = (self.before).then(|| ((last - at) * 1e3).max(0.0));
    }
}

struct Move {
    /// The server ports of the flows (the rw client's or strongSwan's).
    ports: Ports,
    /// The edge whose masquerading address the flows keep (their home).
    home: usize,
    moves_at: Vec<u128>,
    /// When edge a was killed (case ham-kill).
    kill_at: Option<u128>,
    start: u128,
    end: u128,
    udp_sent: u64,
    udp_received: u64,
    back_lost: u64,
    back_after_kill: u64,
    /// The stream back (server -> client): when its packet 0 was due (unix ns), its rate,
    /// the last sequence number that arrived and the ones below it that did not.
    back_start: u128,
    pps: u64,
    back_max: i64,
    back_missing: BTreeSet<u64>,
    tcp_bytes: u64,
    iperf_error: Option<String>,
    idle: bool,
    idle_second: bool,
}

impl Move {
    /// The packets of the stream back due after `from` (unix ns) that arrived.
    fn back_after(&self, from: u128) -> u64 {
        (0..=self.back_max.max(0) as u64)
            .filter(|i| {
                self.back_max >= 0
                    && self.back_start
                        + u128::from(*i) * 1_000_000_000 / u128::from(self.pps.max(1))
                        > from
                    && !self.back_missing.contains(i)
            })
            .count() as u64
    }
}

/// One client's flows to the server (cases move and sw-move), all started from `client`:
/// a paced TCP transfer (iperf3 to its one-off server on `ports.iperf`), an idle TCP
/// connection to the echo service (one line before the moves, one after), a paced UDP
/// stream to the server (`ports.udp`) and one back from it (`ports.back`).
struct Flows {
    ports: Ports,
    home: usize,
    /// Prefix of the files kept in the scratch directory (`{tag}iperf3.json`).
    tag: &'static str,
    start: u128,
    pps: u64,
    secs: u64,
    trigger: PathBuf,
    iperf_s: NsProcess,
    recv: NsProcess,
    serve: NsProcess,
    idle: NsProcess,
    fetch: NsProcess,
    send: NsProcess,
    iperf: NsProcess,
}

/// Starts the flows and returns once the idle connection and iperf3's two are established
/// (through edge `home`: the moves wait for them, whatever the load).
#[allow(clippy::too_many_arguments)]
fn start_flows(
    dir: &Path,
    client: &str,
    srv: &str,
    ports: Ports,
    home: usize,
    tag: &'static str,
    secs: u64,
    pps: u64,
    rate: &str,
) -> Flows {
    let st = stream_tool();
    let tool = tool();
    let start = unix_ns();
    let iperf_port = ports.iperf.to_string();
    let iperf_s = NsProcess::spawn(srv, &["iperf3", "-s", "-1", "-p", &iperf_port], "iperf3 -s");
    let recv = NsProcess::spawn(
        srv,
        &[
            "env",
            "UDP_STREAM_IDLE_EXIT=0.5",
            "python3",
            &st,
            "recv",
            &ports.udp.to_string(),
            &(secs + 1).to_string(),
        ],
        "udp recv",
    );
    let serve = NsProcess::spawn(
        srv,
        &[
            "python3",
            &st,
            "serve",
            &ports.back.to_string(),
            &pps.to_string(),
            &secs.to_string(),
        ],
        "udp serve",
    );
    wait_udp_bound(srv, ports.udp, Duration::from_secs(20));
    wait_udp_bound(srv, ports.back, Duration::from_secs(20));
    let trigger = dir.join(format!("{tag}idle.trigger"));
    let _ = std::fs::remove_file(&trigger);
    let idle = NsProcess::spawn(
        client,
        &[
            "python3",
            &tool,
            "idle",
            SERVER,
            "7001",
            trigger.to_str().unwrap(),
            &(secs + 20).to_string(),
        ],
        "idle connection",
    );
    let fetch = NsProcess::spawn(
        client,
        &[
            "python3",
            &st,
            "fetch",
            SERVER,
            &ports.back.to_string(),
            &(secs as f64 + 0.5).to_string(),
        ],
        "udp fetch",
    );
    let send = NsProcess::spawn(
        client,
        &[
            "python3",
            &st,
            "send",
            SERVER,
            &ports.udp.to_string(),
            &pps.to_string(),
            &secs.to_string(),
        ],
        "udp send",
    );
    let iperf = NsProcess::spawn(
        client,
        &[
            "iperf3",
            "-c",
            SERVER,
            "-p",
            &iperf_port,
            "-t",
            &secs.to_string(),
            "-b",
            rate,
            // 16 KiB writes: paced at 20 Mbit/s a write goes every 6.5 ms (iperf3's default
            // 128 KiB: every 52 ms, which would be the resolution of the stall).
            "-l",
            "16K",
            "-J",
        ],
        "iperf3 -c",
    );
    let t = Instant::now();
    loop {
        let out = in_ns(
            client,
            &["ss", "-Htn", "state", "established", "dst", SERVER],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let n = |port: &str| text.lines().filter(|l| l.contains(port)).count();
        if n(":7001") >= 1 && n(&format!(":{iperf_port}")) >= 2 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "the idle connection and iperf3's did not start through {}: {text}",
            NAMES[home]
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    Flows {
        ports,
        home,
        tag,
        start,
        pps,
        secs,
        trigger,
        iperf_s,
        recv,
        serve,
        idle,
        fetch,
        send,
        iperf,
    }
}

impl Flows {
    /// Waits for the flows' ends (the idle connection's second line asked for first) and
    /// what each tool said; no events (`moves_at`, `kill_at`) yet.
    fn finish(self, dir: &Path) -> Move {
        let (_, iperf_out, iperf_err) = self.iperf.wait(Duration::from_secs(self.secs + 20));
        let _ = std::fs::write(dir.join(format!("{}iperf3.json", self.tag)), &iperf_out);
        std::fs::write(&self.trigger, b"go").unwrap();
        let (_, idle_out, _) = self.idle.wait(Duration::from_secs(15));
        let (_, sent_out, _) = self.send.wait(Duration::from_secs(5));
        let (_, recv_out, _) = self.recv.wait(Duration::from_secs(5));
        let (_, fetch_out, _) = self.fetch.wait(Duration::from_secs(5));
        let (_, serve_out, _) = self.serve.wait(Duration::from_secs(2));
        let _ = self.iperf_s.wait(Duration::from_secs(2));
        let end = unix_ns();
        let j = |s: &str| serde_json::from_str::<serde_json::Value>(s.trim()).unwrap_or_default();
        let iperf_v = j(&iperf_out);
        let idle_v = j(&idle_out);
        let sent = j(&sent_out);
        let got = j(&recv_out);
        let back = j(&fetch_out);
        let back_sent = (self.pps * self.secs).max(1);
        let served = j(&serve_out);
        Move {
            ports: self.ports,
            home: self.home,
            moves_at: Vec::new(),
            kill_at: None,
            back_start: u128::from(served["start_unix_ns"].as_u64().unwrap_or(0)),
            pps: self.pps,
            back_max: back["max_seq"].as_i64().unwrap_or(-1),
            back_missing: back["missing"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
                .unwrap_or_default(),
            start: self.start,
            end,
            udp_sent: sent["sent"].as_u64().unwrap_or(0),
            udp_received: got["received"].as_u64().unwrap_or(0),
            back_lost: back_sent.saturating_sub(back["received"].as_u64().unwrap_or(0)),
            back_after_kill: 0,
            tcp_bytes: iperf_v["end"]["sum_received"]["bytes"]
                .as_u64()
                .unwrap_or(0),
            iperf_error: iperf_v["error"]
                .as_str()
                .map(str::to_owned)
                .or_else(|| iperf_v.is_null().then(|| format!("no result: {iperf_err}"))),
            idle: idle_v["first"].as_bool() == Some(true),
            idle_second: idle_v["second"].as_bool() == Some(true),
        }
    }
}

/// When the `n`th event of a run of `secs` s happens (s after the flows started): `s`, or
/// the fraction `f` of a run of 12 s or more.
fn event_at(secs: u64, s: f64, f: f64) -> Duration {
    Duration::from_secs_f64(if secs >= 12 { secs as f64 * f } else { s })
}

/// Case move and ham-kill: the flows, the moves a -> b -> c, the death of edge a.
fn move_case(
    m: &mut Mobnat,
    home: &str,
    srv: &str,
    secs: u64,
    pps: u64,
    rate: &str,
    kill: bool,
) -> Move {
    stage("move: start");
    // Every connection starts at edge a (its home).
    let flows = start_flows(&m.dir, home, srv, RW_PORTS, 0, "", secs, pps, rate);
    let t0 = Instant::now();
    // Moves at 0.8 s and 1.6 s (or 20 % and 35 % of a run of 12 s or more), the kill at 2.4 s
    // (50 %):
    // each event's stall is measured until the next; the transfer goes on long enough after
    // the kill for TCP's backed-off retransmission to find the way back open.
    let at = |s: f64, f: f64| event_at(secs, s, f);
    let mut moves_at = Vec::new();
    for (k, s, frac) in [(1usize, 0.8, 0.2), (2, 1.6, 0.35)] {
        if let Some(d) = at(s, frac).checked_sub(t0.elapsed()) {
            std::thread::sleep(d);
        }
        steer(m, None, k);
        moves_at.push(unix_ns());
    }
    // The HAM (edge a) dies with the client at edge c.
    let kill_at = kill.then(|| {
        if let Some(d) = at(2.4, 0.5).checked_sub(t0.elapsed()) {
            std::thread::sleep(d);
        }
        let kill_at = unix_ns();
        let a = m.edges[0].take().expect("edge a runs");
        let last_words = a.kill9_with_children();
        let _ = std::fs::write(m.dir.join("edge-a.killed.log"), last_words);
        stage("move: edge a killed");
        kill_at
    });

    stage("move: events done");
    let mut mv = flows.finish(&m.dir);
    stage("move: tools done");
    // The stream back (server -> client: through the HAM) after the takeover: the packets
    // due more than 3 s after the kill that arrived.
    mv.back_after_kill = mv.back_after(kill_at.unwrap_or(mv.start) + after_kill_ns());
    mv.moves_at = moves_at;
    mv.kill_at = kill_at;
    mv
}

/// strongSwan's addresses in case sw-move, in the order it takes them, each with the edge the
/// router steers it to (`ip rule add from ADDR table 110+edge`): b, then c, then a.
const SW_ADDRS: [(&str, usize); 3] = [
    ("198.51.100.10", 1),
    ("198.51.100.11", 2),
    ("198.51.100.12", 0),
];

/// The largest stall per move of case sw-move asserted (ms). strongSwan's kernel-libipsec
/// cannot move an SA's addresses: after the MOBIKE update it rekeys its CHILD_SA, and its
/// ESP waits for the new one (tests/mobike_netns.rs measures the same without a cluster).
/// The figure is printed against the 100 ms; the bound leaves room for a loaded CI
/// machine.
const SW_MOVE_STALL_BOUND_MS: f64 = 2000.0;

struct SwMove {
    mv: Move,
    /// The edge the crypto node designated for strongSwan's virtual IP before the moves and
    /// before each next event (the next move, the end of the flows).
    edges: Vec<Option<u64>>,
    /// strongSwan's IKE SA before and after: same SPIs, its local address after the moves.
    ike_kept: bool,
    local_host: String,
    /// strongSwan's installed CHILD_SAs' SPIs (in/out) before and after the moves.
    child_before: Vec<String>,
    child_after: Vec<String>,
}

/// strongSwan's IKE SA (`gw`) as `swanctl --list-sas --raw` lists it.
fn sw_sa(c: &Charon) -> serde_json::Value {
    swanctl_sas(&c.swanctl(&["--list-sas", "--raw"]))["gw"].clone()
}

/// The installed CHILD_SAs' SPIs (in/out) of an IKE SA listed by `sw_sa` (charon lists a
/// rekeyed one as DELETED for a while).
fn sw_child_spis(sa: &serde_json::Value) -> Vec<String> {
    sa["child-sas"]
        .as_object()
        .map(|c| {
            c.values()
                .filter(|x| x["state"].as_str() == Some("INSTALLED"))
                .map(|x| {
                    format!(
                        "{}/{}",
                        x["spi-in"].as_str().unwrap_or("?"),
                        x["spi-out"].as_str().unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Case sw-move (see the file's header): strongSwan's flows through edge b; strongSwan
/// changes its own address twice (MOBIKE), the router steers each new address to another
/// edge.
fn sw_move_case(m: &Mobnat, srv: &str, secs: u64, pps: u64, rate: &str) -> SwMove {
    let (rtr, sw) = (m.ns("rtr"), m.ns("sw"));
    for (addr, n) in SW_ADDRS {
        sh(
            &rtr,
            &format!("ip route replace 203.0.113.1/32 dev p{n} table {}", 110 + n),
        );
        sh(&rtr, &format!("ip rule add from {addr} table {}", 110 + n));
    }
    // The new address becomes the interface's primary one when the old one goes (without
    // this the kernel deletes the secondaries with their primary).
    sh(&sw, "sysctl -qw net.ipv4.conf.eth0.promote_secondaries=1");
    let c = Charon::start_with(
        &sw,
        &m.dir.join("sw-move"),
        &swanctl_conf("mobnat-sw.swanctl.conf"),
    );
    let out = c.swanctl(&["--initiate", "--child", "net"]);
    assert!(out.contains("initiate completed successfully"), "{out}");
    let before = sw_sa(&c);
    let vip = before["local-vips"][0]
        .as_str()
        .unwrap_or_else(|| panic!("strongSwan's virtual IP: {before}"))
        .to_owned();
    assert!(
        wait_designated(m, &vip, 1, || {
            let _ = probe(&sw, 0.3, &["10.9.0.10:7001"]);
        }),
        "strongSwan at edge b before the moves"
    );
    stage("sw-move: strongSwan up at edge b");
    let flows = start_flows(&m.dir, &sw, srv, SW_PORTS, 1, "sw-", secs, pps, rate);
    let t0 = Instant::now();
    let mut edges = vec![designated_edge(&m.node_sock, &vip)];
    let mut moves_at = Vec::new();
    // Moves at 1 s and 3.5 s (or 20 % and 50 % of a run of 12 s or more): the CHILD_SA's
    // rekey after each takes longer than the roamgate client's move.
    for (k, s, frac) in [(1usize, 1.0, 0.2), (2, 3.5, 0.5)] {
        if let Some(d) = event_at(secs, s, frac).checked_sub(t0.elapsed()) {
            std::thread::sleep(d);
        }
        if k > 1 {
            edges.push(designated_edge(&m.node_sock, &vip));
        }
        let (old, new) = (SW_ADDRS[k - 1].0, SW_ADDRS[k].0);
        moves_at.push(unix_ns());
        // The new address, then the old one gone: charon's MOBIKE update comes from the new.
        sh(&sw, &format!("ip addr add {new}/24 dev eth0"));
        sh(&sw, &format!("ip addr del {old}/24 dev eth0"));
        sh(&sw, "ip route replace default via 198.51.100.254");
        stage(&format!(
            "sw-move: {old} -> {new} (at unix {:.3})",
            secs_f(*moves_at.last().unwrap())
        ));
    }
    let mut mv = flows.finish(&m.dir);
    edges.push(designated_edge(&m.node_sock, &vip));
    mv.moves_at = moves_at;
    stage("sw-move: tools done");
    let after = sw_sa(&c);
    c.stop();
    for (addr, n) in SW_ADDRS {
        let _ = in_ns(
            &rtr,
            &[
                "ip",
                "rule",
                "del",
                "from",
                addr,
                "table",
                &(110 + n).to_string(),
            ],
        );
    }
    SwMove {
        mv,
        edges,
        ike_kept: before["initiator-spi"].as_str().is_some()
            && before["initiator-spi"] == after["initiator-spi"]
            && before["responder-spi"] == after["responder-spi"],
        local_host: after["local-host"].as_str().unwrap_or("none").to_owned(),
        child_before: sw_child_spis(&before),
        child_after: sw_child_spis(&after),
    }
}

/// The stream back is counted as arriving after the takeover from this long after the kill
/// (the successor acts, plus 0.5 s).
fn after_kill_ns() -> u128 {
    u128::from(kill_detect_ms()) * 1_000_000 + 500_000_000
}

/// One event's stall: the client -> server direction (largest gap between the server's
/// arrivals of the transfer's new data, retransmissions left out, and of the UDP stream) and
/// the way back (the longest run of the stream back's packets that never reached the
/// client, as time at its rate).
#[derive(Clone, Copy, Debug)]
struct Stall {
    tcp_ms: f64,
    udp_ms: f64,
    back_ms: f64,
}

impl Stall {
    fn max(&self) -> f64 {
        self.tcp_ms.max(self.udp_ms).max(self.back_ms)
    }
}

impl std::fmt::Display for Stall {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "{:.0}(tcp={:.0},udp={:.0},back={:.0})",
            self.max(),
            self.tcp_ms,
            self.udp_ms,
            self.back_ms
        )
    }
}

/// The arrival times at the server of the transfer's new data (its busiest connection to
/// iperf3's port; segments tshark marks as retransmissions left out) and of the UDP stream
/// to the server, in [from, to] (s).
fn flow_times(pkts: &[Pkt], from: f64, to: f64, ports: Ports) -> (Vec<f64>, Vec<f64>) {
    let mut by_port: BTreeMap<u16, Vec<f64>> = BTreeMap::new();
    for p in pkts
        .iter()
        .filter(|p| p.t >= from && p.t <= to && p.tcp && p.dport == ports.iperf && p.new_data)
    {
        by_port.entry(p.sport).or_default().push(p.t);
    }
    let tcp = by_port
        .into_values()
        .max_by_key(Vec::len)
        .unwrap_or_default();
    let udp = pkts
        .iter()
        .filter(|p| p.t >= from && p.t <= to && !p.tcp && p.dport == ports.udp)
        .map(|p| p.t)
        .collect();
    (tcp, udp)
}

/// The stall of the event at `at` (s) until `until` (the next event, at most `max` s later).
fn stall_at(tcp: &[f64], udp: &[f64], mv: &Move, at: f64, until: f64, max: f64) -> Stall {
    let within = (until - at).clamp(0.0, max);
    // The stream back: packet i was due at back_start + i / pps.
    let due = |i: u64| secs_f(mv.back_start) + i as f64 / mv.pps.max(1) as f64;
    let mut run = 0u64;
    let mut longest = 0u64;
    for i in 0..=mv.back_max.max(0) as u64 {
        if mv.back_max < 0 || due(i) < at || due(i) > at + within {
            continue;
        }
        if mv.back_missing.contains(&i) {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    Stall {
        tcp_ms: stall_ms(tcp, at, within),
        udp_ms: stall_ms(udp, at, within),
        back_ms: longest as f64 * 1e3 / mv.pps.max(1) as f64,
    }
}

struct MoveReport {
    rst: usize,
    /// iperf3's resets after its TEST_END (not counted in `rst`).
    rst_teardown: usize,
    same_src: bool,
    stalls: Vec<Stall>,
    sources: BTreeMap<String, BTreeSet<String>>,
}

fn move_audit(pkts: &[Pkt], mv: &Move, masq: &BTreeSet<&str>) -> MoveReport {
    let (from, to) = (secs_f(mv.start), secs_f(mv.end));
    let win: Vec<&Pkt> = pkts.iter().filter(|p| p.t >= from && p.t <= to).collect();
    // Per service the client sources the server saw (and the destinations of its answers
    // on the UDP stream back).
    let mut sources: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let ports = mv.ports;
    for p in &win {
        let key = match (p.tcp, p.dport, p.sport) {
            (true, d, _) if d == ports.iperf => "tcp/iperf3",
            (true, 7001, _) => "tcp/7001",
            (false, d, _) if d == ports.udp => "udp/stream",
            (false, d, _) if d == ports.back => "udp/back(hello)",
            (false, _, s) if s == ports.back => "udp/back",
            _ => continue,
        };
        let who = if key == "udp/back" {
            format!("{}:{}", p.dst, p.dport)
        } else {
            format!("{}:{}", p.src, p.sport)
        };
        sources.entry(key.into()).or_default().insert(who);
    }
    let want: [(&str, usize); 5] = [
        ("tcp/iperf3", 2), // iperf3's control and data connections
        ("tcp/7001", 1),
        ("udp/stream", 1),
        ("udp/back(hello)", 1),
        ("udp/back", 1),
    ];
    let same_src = want.iter().all(|(k, n)| {
        sources.get(*k).is_some_and(|s| {
            s.len() == *n
                && s.iter()
                    .all(|a| a.split(':').next().is_some_and(|ip| ip == MASQ[mv.home]))
        })
    }) && win
        .iter()
        .all(|p| p.dst != SERVER || masq.contains(p.src.as_str()));
    let end = iperf_end(pkts, ports.iperf);
    let rst = win
        .iter()
        .filter(|p| counted_rst(p, end, ports.iperf) && mv.kill_at.is_none_or(|k| p.t < secs_f(k)))
        .count();
    let rst_teardown = win.iter().filter(|p| p.rst).count()
        - win
            .iter()
            .filter(|p| counted_rst(p, end, ports.iperf))
            .count();
    let (tcp, udp) = flow_times(pkts, from, to, ports);
    // Each move until the next event (the next move, the kill, the end).
    let mut events: Vec<f64> = mv.moves_at.iter().map(|t| secs_f(*t)).collect();
    events.extend(mv.kill_at.map(secs_f));
    events.push(to);
    let stalls = events
        .windows(2)
        .take(mv.moves_at.len())
        .map(|w| stall_at(&tcp, &udp, mv, w[0], w[1], 3.0))
        .collect();
    MoveReport {
        rst,
        rst_teardown,
        same_src,
        stalls,
        sources,
    }
}

struct KillReport {
    rst: usize,
    stall: Stall,
    garp_from: Option<String>,
    garp_ms: Option<f64>,
    neigh: String,
    tcp_after: bool,
    udp_after: bool,
    nodes_after: Vec<String>,
}

fn kill_audit(m: &Mobnat, pkts: &[Pkt], lan_pcap: &Path, mv: &Move, kill_at: u128) -> KillReport {
    let kill = secs_f(kill_at);
    let end = secs_f(mv.end);
    let test_end = iperf_end(pkts, mv.ports.iperf);
    let rst = pkts
        .iter()
        .filter(|p| counted_rst(p, test_end, mv.ports.iperf) && p.t >= kill && p.t <= end)
        .count();
    let (tcp, udp) = flow_times(pkts, secs_f(mv.start), end, mv.ports);
    let stall = stall_at(&tcp, &udp, mv, kill, end, 5.0);
    // Arrivals well after the takeover: the flows went on.
    let after = secs_f(after_kill_ns());
    let tcp_after = tcp.iter().any(|t| *t > kill + after);
    let udp_after = udp.iter().any(|t| *t > kill + after);
    // A gratuitous ARP (sender = target = 10.8.0.100) from a live edge after the kill.
    let garp = tshark_fields(
        lan_pcap,
        "arp.src.proto_ipv4 == 10.8.0.100 && arp.dst.proto_ipv4 == 10.8.0.100",
        &["frame.time_epoch", "eth.src"],
    )
    .into_iter()
    .filter_map(|f| Some((f.first()?.parse::<f64>().ok()?, f.get(1)?.to_lowercase())))
    .filter(|(t, _)| *t >= kill)
    .find_map(|(t, mac)| {
        EDGE_MAC
            .iter()
            .position(|e| *e == mac)
            .filter(|i| *i != 0)
            .map(|i| (NAMES[i].to_owned(), (t - kill) * 1e3))
    });
    let neigh =
        String::from_utf8_lossy(&in_ns(&m.ns("lr"), &["ip", "neigh", "show", "10.8.0.100"]).stdout)
            .trim()
            .to_owned();
    let neigh = EDGE_MAC
        .iter()
        .position(|e| neigh.contains(e))
        .map_or(format!("'{neigh}'"), |i| NAMES[i].to_owned());
    KillReport {
        rst,
        stall,
        garp_ms: garp.as_ref().map(|g| g.1),
        garp_from: garp.map(|g| g.0),
        neigh,
        tcp_after,
        udp_after,
        nodes_after: m.live_nodes(),
    }
}

struct Blocks {
    conns: usize,
    blocks: usize,
    overlap: usize,
    foreign: usize,
    reused: usize,
    per_node: BTreeMap<String, usize>,
}

/// Case blocks: every masqueraded connection the server saw, its home (the edge that sent
/// its first packet onto the LAN segment), grouped by port block.
fn blocks_audit(pkts: &[Pkt], lan_pcap: &Path, masq: &BTreeSet<&str>) -> Blocks {
    // (proto, masq addr, masq port) -> the server endpoints it talked to.
    let mut conns: BTreeMap<(bool, String, u16), BTreeSet<(String, u16)>> = BTreeMap::new();
    for p in pkts.iter().filter(|p| masq.contains(p.src.as_str())) {
        conns
            .entry((p.tcp, p.src.clone(), p.sport))
            .or_default()
            .insert((p.dst.clone(), p.dport));
    }
    // The first sender on the LAN segment of each.
    let mut home: BTreeMap<(bool, String, u16), usize> = BTreeMap::new();
    for f in tshark_fields(
        lan_pcap,
        "ip.src >= 10.8.0.100 && ip.src <= 10.8.0.102 && (tcp || udp)",
        &["eth.src", "ip.src", "tcp.srcport", "udp.srcport"],
    ) {
        let g = |i: usize| f.get(i).map(String::as_str).unwrap_or("");
        let tcp = !g(2).is_empty();
        let Ok(port) = (if tcp { g(2) } else { g(3) }).parse::<u16>() else {
            continue;
        };
        let Some(node) = EDGE_MAC.iter().position(|e| *e == g(0).to_lowercase()) else {
            continue;
        };
        home.entry((tcp, g(1).to_owned(), port)).or_insert(node);
    }
    let mut blocks: BTreeMap<(String, u16), BTreeSet<usize>> = BTreeMap::new();
    let mut foreign = 0;
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for (key, node) in &home {
        blocks
            .entry((key.1.clone(), key.2 >> 8))
            .or_default()
            .insert(*node);
        *per_node.entry(NAMES[*node].to_owned()).or_default() += 1;
        if key.1 != MASQ[*node] {
            foreign += 1;
        }
    }
    Blocks {
        conns: conns.len(),
        blocks: blocks.len(),
        overlap: blocks.values().filter(|n| n.len() > 1).count(),
        foreign,
        reused: conns.values().filter(|d| d.len() > 1).count(),
        per_node,
    }
}
