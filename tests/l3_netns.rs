//! Neighbour resolution and outer-fragment reassembly on real ports, in network namespaces
//! (vendor-scripts/netns-lab.sh).
//!
//! * Gateway A without any `neighbor_mac` (its links resolve with ARP and neighbour
//!   discovery) against gateway B as shipped: pings both families and ways; ICMP errors from
//!   A (time exceeded for TTL 1 from its LAN and for TTL 2 from B's, which runs out at A and is
//!   answered through the tunnel; host unreachable for an absent host behind A, through the
//!   tunnel, once A's ARP gives up); an iperf3 TCP run,
//!   then a flood of incomplete outer fragments from many sources, which must leave A's
//!   reassembly memory and datagram counts within the limits of its config, counted, and A
//!   forwarding.
//! * Gateway B's WAN link allows 1600 bytes, A's 1500: ESP from B that outgrows A's link is
//!   cut in two on the path (a raw-socket fragmenter in the internet namespace, as a router
//!   would), and A must reassemble it and deliver what it carries.
//!
//! Needs root (prints a SKIP line otherwise, unless ROAMGATE_REQUIRE_ROOT=1) and iproute2,
//! ping, iperf3 and python3. Run under the shared lock (`flock -o /tmp/roamgate-netns.lock`).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use roamgate_tests::netns::{
    in_ns, root_or_skip, wait_udp_bound, DataplaneProcess, NetnsLab, NsProcess,
};
use roamgate_tests::{have_tool, root, scratch};

/// The binary under test: `ROAMGATE_BIN` (the release build `.ci/run` makes) or this build's.
static BIN: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| roamgate_tests::roamgate_bin(env!("CARGO_BIN_EXE_roamgate")));

static SERIAL: Mutex<()> = Mutex::new(());

/// Reassembly limits of gateway A in these tests: small, so that a flood reaches them.
const MAX_DATAGRAMS: u64 = 128;
const MAX_PER_SOURCE: u64 = 16;
const MAX_BYTES: u64 = 262_144;

fn tools_present() -> bool {
    have_tool("ip", &["-V"])
        && have_tool("ping", &["-V"])
        && have_tool("iperf3", &["--version"])
        && have_tool("python3", &["--version"])
}

/// configs/netns-a.yaml with no `neighbor_mac` anywhere: the LAN's subnets, the WAN's subnet
/// (both families) and one static neighbour instead, and small reassembly limits.
fn resolving_config(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(root().join("configs/netns-a.yaml")).expect("config");
    let text = text
        .replace(
            "address6: \"fd00:a::1\", neighbor_mac: \"02:00:00:00:0a:fe\"",
            "address6: \"fd00:a::1\", prefix_len: 24, prefix_len6: 64",
        )
        .replace(
            "address: 192.0.2.1, neighbor_mac: \"02:00:00:00:bb:01\"",
            // B does not answer neighbour solicitations (its WAN has no IPv6 address of its
            // own in its config): a static neighbour.
            "address: 192.0.2.1, prefix_len: 24, address6: \"2001:db8::1\", prefix_len6: 64, \
             neighbors: [{ address: \"2001:db8::2\", mac: \"02:00:00:00:bb:01\" }]",
        )
        .replace(
            "  workers: 1\n",
            &format!(
                "  workers: 1\n  reassembly: {{ max_datagrams: {MAX_DATAGRAMS}, \
                 max_per_source: {MAX_PER_SOURCE}, max_bytes: {MAX_BYTES} }}\n"
            ),
        );
    assert!(!text.contains("neighbor_mac"), "{text}");
    let p = dir.join("gw-a-resolving.yaml");
    std::fs::write(&p, text).expect("write config");
    p
}

fn l3(stats: &serde_json::Value, name: &str) -> u64 {
    stats["l3"][name].as_u64().unwrap_or(0)
}

fn drops(stats: &serde_json::Value, reason: &str) -> u64 {
    stats["drops"][reason].as_u64().unwrap_or(0)
}

/// Waits until `gw`'s published stats satisfy `ok` (they are written about once a second).
fn stats_until(
    gw: &DataplaneProcess,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let t = Instant::now();
    loop {
        let s = gw.stats();
        if ok(&s) {
            return s;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{what}: {s}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A first fragment (More Fragments, offset 0) of ESP from `src` to gateway A, 64 bytes of
/// data, never completed.
fn first_fragment(src: [u8; 4], ident: u16) -> Vec<u8> {
    let mut f = vec![
        0x02, 0, 0, 0, 0xaa, 0x01, 0x02, 0, 0, 0, 0xbb, 0x01, 0x08, 0x00,
    ];
    let mut ip = vec![
        0x45,
        0,
        0,
        84,
        (ident >> 8) as u8,
        ident as u8,
        0x20,
        0,
        64,
        50,
        0,
        0,
    ];
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&[192, 0, 2, 1]);
    let sum = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum::<u32>();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&[0xb0; 64]);
    f
}

#[test]
fn a_gateway_without_neighbor_macs_resolves_and_bounds_reassembly() {
    let test = "l3_netns_resolving";
    if !root_or_skip(test) || !tools_present() {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = scratch(test);
    let lab = NetnsLab::up("rg3r");
    let gw_a = DataplaneProcess::start(
        Path::new(BIN.as_str()),
        &lab.ns("gwa"),
        &resolving_config(&dir),
        &dir,
        "gw-a",
    );
    let gw_b = DataplaneProcess::start(
        Path::new(BIN.as_str()),
        &lab.ns("gwb"),
        &root().join("configs/netns-b.yaml"),
        &dir,
        "gw-b",
    );

    // The first ping waits for A to resolve B (and the LAN host): allow one loss.
    assert!(lab.ping("lana", "10.2.0.10", 5) >= 4, "IPv4 ping A -> B");
    assert_eq!(lab.ping("lana", "10.2.0.10", 5), 5, "IPv4 ping A -> B");
    assert_eq!(lab.ping("lanb", "10.1.0.10", 5), 5, "IPv4 ping B -> A");
    assert!(lab.ping("lana", "fd00:b::10", 5) >= 4, "IPv6 ping A -> B");
    assert_eq!(lab.ping("lanb", "fd00:a::10", 5), 5, "IPv6 ping B -> A");

    // ICMP errors from A (what traceroute and ping read): a TTL that runs out at A, from A's
    // LAN side or through the tunnel, and a host behind A that never answers ARP.
    let ping = |from: &str, args: &[&str]| {
        let out = in_ns(&lab.ns(from), &[&["ping", "-n", "-c", "1"], args].concat());
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let text = ping("lana", &["-t", "1", "-W", "2", "10.2.0.10"]);
    assert!(
        text.contains("From 10.1.0.1") && text.contains("Time to live exceeded"),
        "TTL 1 from A's LAN: {text}"
    );
    let text = ping("lanb", &["-t", "2", "-W", "2", "10.1.0.10"]);
    assert!(
        text.contains("From 10.1.0.1") && text.contains("Time to live exceeded"),
        "TTL 2 from B's LAN (1 at A, after B), answered through the tunnel: {text}"
    );
    let text = ping("lanb", &["-W", "8", "10.1.0.99"]);
    assert!(
        text.contains("From 10.1.0.1") && text.contains("Destination Host Unreachable"),
        "a host behind A that never answers, told through the tunnel: {text}"
    );
    stats_until(&gw_a, "A counts the three ICMP errors", |s| {
        s["traffic"]["icmp_sent"].as_u64().unwrap_or(0) >= 3
    });

    let server = NsProcess::spawn(
        &lab.ns("lanb"),
        &["iperf3", "-s", "-1", "-B", "10.2.0.10"],
        "iperf3 server",
    );
    std::thread::sleep(Duration::from_millis(500));
    let out = in_ns(
        &lab.ns("lana"),
        &["iperf3", "-c", "10.2.0.10", "-t", "2", "-J"],
    );
    drop(server);
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("iperf3 -J prints JSON");
    let bytes = report["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    println!("{test}: iperf3 TCP A->B moved {} MB", bytes / 1_000_000);
    assert!(
        bytes > 1_000_000,
        "iperf3 moved only {bytes} bytes: {report}"
    );

    let s = stats_until(&gw_a, "A resolved its neighbours", |s| {
        // B's IPv4 address resolved (its IPv6 one is static); both LAN hosts asked for the
        // gateway first (gleaned) or were resolved.
        l3(s, "neighbor_wan_resolved") >= 1
            && l3(s, "neighbor_wan_entries") >= 2
            && l3(s, "neighbor_lan_resolved") + l3(s, "neighbor_lan_gleaned") >= 2
    });
    println!("{test}: A's neighbour counters: {}", s["l3"]);
    assert!(s["traffic"]["neighbor_requests"].as_u64().unwrap_or(0) >= 1);
    assert_eq!(drops(&s, "no_route"), 0, "{s}");

    // A flood of first fragments from 200 sources, none ever completed.
    let frames: Vec<Vec<u8>> = (0..3000u16)
        .map(|i| first_fragment([198, 51, 100, (i % 200) as u8 + 1], i))
        .collect();
    for chunk in frames.chunks(500) {
        lab.inject("a", chunk);
    }
    let s = stats_until(&gw_a, "the flood was counted", |s| {
        l3(s, "reasm_fragments") >= 3000
    });
    println!("{test}: A's reassembly after the flood: {}", s["l3"]);
    assert!(l3(&s, "reasm_memory_bytes") <= MAX_BYTES, "{s}");
    assert!(l3(&s, "reasm_in_flight") <= MAX_DATAGRAMS, "{s}");
    assert_eq!(l3(&s, "reasm_reassembled"), 0, "{s}");
    assert_eq!(drops(&s, "reasm_held"), 3000, "{s}");
    assert!(
        l3(&s, "reasm_datagrams_evicted") + l3(&s, "reasm_datagrams_source_limit")
            >= 3000 - MAX_DATAGRAMS,
        "the limits pushed the rest out: {s}"
    );
    assert_eq!(drops(&s, "malformed_ip"), 0, "{s}");
    assert_eq!(
        lab.ping("lana", "10.2.0.10", 3),
        3,
        "A forwards after the flood"
    );
    gw_a.stop();
    gw_b.stop();
}

/// Cuts every IPv4 ESP frame longer than 1514 bytes that arrives on `to-b` (from gateway B,
/// whose WAN link allows 1600) in two fragments and sends them on `to-a` (1500), as a router
/// on the path would: the bridge itself drops frames larger than A's link. Runs `secs`.
const FRAGMENTER: &str = "import socket,struct,sys,time\n\
rx=socket.socket(socket.AF_PACKET,socket.SOCK_RAW,socket.htons(3))\n\
rx.bind(('to-b',0))\n\
rx.settimeout(0.1)\n\
tx=socket.socket(socket.AF_PACKET,socket.SOCK_RAW)\n\
tx.bind(('to-a',0))\n\
def csum(h):\n\
\x20s=sum(struct.unpack('!10H',h))\n\
\x20s=(s&0xffff)+(s>>16)\n\
\x20return (~((s&0xffff)+(s>>16)))&0xffff\n\
def frag(eth,ip,data,off,more):\n\
\x20h=bytearray(ip[:20])\n\
\x20struct.pack_into('!H',h,2,20+len(data))\n\
\x20struct.pack_into('!H',h,6,(0x2000 if more else 0)|(off//8))\n\
\x20struct.pack_into('!H',h,10,0)\n\
\x20struct.pack_into('!H',h,10,csum(bytes(h)))\n\
\x20tx.send(eth+bytes(h)+data)\n\
n=0\n\
end=time.time()+float(sys.argv[1])\n\
while time.time()<end:\n\
\x20try:\n\
\x20\x20f=rx.recv(4096)\n\
\x20except socket.timeout:\n\
\x20\x20continue\n\
\x20if len(f)<=1514 or f[12:14]!=b'\\x08\\x00' or f[23]!=50:\n\
\x20\x20continue\n\
\x20ip=f[14:]\n\
\x20body=ip[20:struct.unpack('!H',ip[2:4])[0]]\n\
\x20frag(f[:14],ip,body[:1472],0,True)\n\
\x20frag(f[:14],ip,body[1472:],1472,False)\n\
\x20n+=1\n\
print(n)\n";

#[test]
fn esp_fragmented_on_the_outer_path_is_reassembled() {
    let test = "l3_netns_fragments";
    if !root_or_skip(test) || !tools_present() {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = scratch(test);
    let lab = NetnsLab::up("rg3f");
    // B's WAN link takes 1600-byte packets; A's stays at 1500.
    for (ns, dev) in [("gwb", "wan"), ("net", "to-b")] {
        let out = in_ns(
            &lab.ns(ns),
            &["ip", "link", "set", "dev", dev, "mtu", "1600"],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = std::fs::read_to_string(root().join("configs/netns-b.yaml")).expect("config");
    let b_config = dir.join("gw-b-1600.yaml");
    std::fs::write(&b_config, text.replace("mtu: 1500", "mtu: 1600")).expect("write config");
    let gw_a = DataplaneProcess::start(
        Path::new(BIN.as_str()),
        &lab.ns("gwa"),
        &resolving_config(&dir),
        &dir,
        "gw-a",
    );
    let gw_b = DataplaneProcess::start(
        Path::new(BIN.as_str()),
        &lab.ns("gwb"),
        &b_config,
        &dir,
        "gw-b",
    );
    assert!(lab.ping("lanb", "10.1.0.10", 5) >= 4, "B -> A");

    let net = lab.ns("net");
    let fragmenter = std::thread::spawn(move || in_ns(&net, &["python3", "-c", FRAGMENTER, "5"]));
    let (ns, script) = (lab.ns("lana"), root().join("tests/tools/udp_stream.py"));
    // It ends by itself after 4 s.
    let recv = std::thread::spawn(move || {
        in_ns(
            &ns,
            &["python3", script.to_str().unwrap(), "recv", "5301", "4"],
        )
    });
    wait_udp_bound(&lab.ns("lana"), 5301, Duration::from_secs(20));
    // 1440 bytes of UDP with DF clear: 1468 inner, about 1524 of ESP from B, more than A's
    // link, so the fragmenter cuts each in two.
    let send = "import socket,struct,time\n\
                s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
                s.setsockopt(socket.IPPROTO_IP,10,0)\n\
                for i in range(50):\n\
                \x20   s.sendto(struct.pack('!QQ',i,0)+b'x'*1424,('10.1.0.10',5301))\n\
                \x20   time.sleep(0.02)\n";
    let out = in_ns(&lab.ns("lanb"), &["python3", "-c", send]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = recv.join().expect("receiver thread");
    let text = String::from_utf8_lossy(&out.stdout);
    let got: serde_json::Value = text
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("receiver printed {text}"));
    let cut = fragmenter.join().expect("fragmenter thread");
    let cut = String::from_utf8_lossy(&cut.stdout).trim().to_string();
    let s = stats_until(&gw_a, "reassembled", |s| l3(s, "reasm_reassembled") >= 45);
    println!(
        "{test}: {cut} ESP packets fragmented, {} of 50 datagrams arrived; A: {}",
        got["received"], s["l3"]
    );
    assert!(got["received"].as_u64().unwrap_or(0) >= 45, "{got}");
    assert_eq!(drops(&s, "outer_fragment"), 0, "{s}");
    assert_eq!(drops(&s, "reasm_no_room"), 0, "{s}");
    gw_a.stop();
    gw_b.stop();
}
