//! An IKE_SA_INIT flood against a gateway while a legitimate client connects (issue 14 item
//! 2): `roamgate control` and `roamgate dataplane --shm` in the road-warrior lab
//! (`netns-lab.sh rw-up`), strongSwan as the client. From the client's namespace a raw
//! AF_PACKET socket sends 50,000 well-formed IKE_SA_INIT requests at 10,000/s, each from its
//! own spoofed address. Measured: the client's connect time without and during the flood, the
//! COOKIE answers in a capture of the client's link, the control process's RSS before and
//! after. Passes when cookies were demanded, the RSS grew by a bounded amount, and the client
//! connected during the flood within a generous multiple of its calm time (without cookies
//! and caps every spoofed request costs a Diffie-Hellman computation and a half-open IKE SA,
//! and the client's request waits behind thousands of them).
//!
//! Printed (and in every failure's message): what each stage on the way from the wire to the
//! IKE core dropped or handed on (`punt_stages`), so a lost request names where it was lost.
//! The client's cookie echo must have taken the data plane's cookie lane.
//!
//! Needs root (prints a SKIP line otherwise), strongSwan and tshark. With
//! `ROAMGATE_FLOOD_UNDEFENDED=1` the gateway runs with cookies and caps off: the same
//! measurements, and the assertions fail.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use roamgate_tests::netns::{Capture, NsProcess};
use roamgate_tests::strongswan::{
    ask, pings, strongswan_or_skip, swanctl_conf, wait_for, Charon, ScriptLab,
};
use roamgate_tests::{root, scratch};

/// The binary under test: `ROAMGATE_BIN` (the release build `.ci/run` makes) or this build's.
static BIN: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| roamgate_tests::roamgate_bin(env!("CARGO_BIN_EXE_roamgate")));
/// Where `roamgate control --metrics` serves (inside the gateway's namespace).
const METRICS: &str = "127.0.0.1:9464";
const FLOOD: u32 = 50_000;
const RATE: u32 = 10_000;
/// The lab's MACs (netns-lab.sh rw-up): the gateway's WAN and the client's eth0.
const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x01];
const RW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x0a];

/// A well-formed IKE_SA_INIT request (aes128gcm16-prfsha256-x25519, as the gateway accepts)
/// with initiator SPI `spi` and 32 bytes of `fill` as both KE value and nonce.
fn ike_sa_init(spi: u64, fill: [u8; 32]) -> Vec<u8> {
    let transforms: [&[u8]; 3] = [
        // ENCR_AES_GCM_16 with a 128-bit key.
        &[3, 0, 0, 12, 1, 0, 0, 20, 0x80, 0x0e, 0, 128],
        // PRF_HMAC_SHA2_256.
        &[3, 0, 0, 8, 2, 0, 0, 5],
        // Curve25519 (the last transform).
        &[0, 0, 0, 8, 4, 0, 0, 31],
    ];
    let t: Vec<u8> = transforms.concat();
    let prop_len = 8 + t.len();
    let mut sa = vec![34, 0]; // next: KE
    sa.extend(((4 + prop_len) as u16).to_be_bytes());
    sa.extend([0, 0]);
    sa.extend((prop_len as u16).to_be_bytes());
    sa.extend([1, 1, 0, 3]); // proposal 1, IKE, SPI size 0, 3 transforms
    sa.extend(t);
    let mut ke = vec![40, 0, 0, 40, 0, 31, 0, 0]; // next: Nonce; group 31
    ke.extend(fill);
    let mut nonce = vec![0, 0, 0, 36];
    nonce.extend(fill);
    let len = 28 + sa.len() + ke.len() + nonce.len();
    let mut m = Vec::with_capacity(len);
    m.extend(spi.to_be_bytes());
    m.extend([0u8; 8]);
    m.extend([33, 0x20, 34, 0x08]); // next: SA; version 2.0; IKE_SA_INIT; initiator
    m.extend([0u8; 4]); // message id 0
    m.extend((len as u32).to_be_bytes());
    m.extend(sa);
    m.extend(ke);
    m.extend(nonce);
    m
}

/// Ethernet + IPv4 + UDP 500 -> 500 around `ike`, from `src` to the gateway.
fn frame(src: [u8; 4], ike: &[u8]) -> Vec<u8> {
    let udp_len = 8 + ike.len();
    let ip_len = 20 + udp_len;
    let mut ip = vec![0x45, 0];
    ip.extend((ip_len as u16).to_be_bytes());
    ip.extend([0, 0, 0x40, 0, 64, 17, 0, 0]);
    ip.extend(src);
    ip.extend([192, 0, 2, 1]);
    let mut sum: u32 = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    let mut f = Vec::with_capacity(14 + ip_len);
    f.extend(GW_MAC);
    f.extend(RW_MAC);
    f.extend([0x08, 0x00]);
    f.extend(ip);
    f.extend(500u16.to_be_bytes());
    f.extend(500u16.to_be_bytes());
    f.extend((udp_len as u16).to_be_bytes());
    f.extend([0, 0]); // no UDP checksum (IPv4 allows it)
    f.extend(ike);
    f
}

/// Sends `count` spoofed IKE_SA_INIT requests at `rate` per second from namespace `ns`'s
/// `eth0` on a raw AF_PACKET socket (this thread enters the namespace; the test's other
/// threads stay where they are). Returns how many the kernel took.
fn flood(
    ns: String,
    count: u32,
    rate: u32,
    started: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u32> {
    std::thread::spawn(move || {
        let netns = File::open(format!("/var/run/netns/{ns}")).expect("namespace file");
        // SAFETY: setns(2) on an open namespace fd moves only the calling thread into it;
        // the fd is valid for the call.
        let r = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns into {ns}");
        // SAFETY: plain socket(2) and if_nametoindex(3) calls with valid arguments; the name is
        // a NUL-terminated literal.
        let (fd, ifindex) = unsafe {
            (
                libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0),
                libc::if_nametoindex(c"eth0".as_ptr()),
            )
        };
        assert!(fd >= 0 && ifindex > 0, "raw socket on eth0");
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value to fill in.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_ifindex = ifindex as i32;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&GW_MAC);
        let mut sent = 0u32;
        let t0 = Instant::now();
        started.store(true, Ordering::Relaxed);
        for i in 0..count {
            // 198.18.0.0/15 (RFC 2544 benchmarking space): a new address for every request.
            let a = 0xc612_0000u32 + i;
            let mut fill = [0u8; 32];
            fill[..4].copy_from_slice(&i.to_be_bytes());
            fill[4..8].copy_from_slice(&0x5eed_f100u32.to_be_bytes());
            let spi = 0x0f10_0d00_0000_0000u64 | u64::from(i) | 1 << 32;
            let f = frame(a.to_be_bytes(), &ike_sa_init(spi, fill));
            // SAFETY: `f` and `to` are valid for the lengths given for the whole call.
            let n = unsafe {
                libc::sendto(
                    fd,
                    f.as_ptr().cast(),
                    f.len(),
                    0,
                    (&to as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if n == f.len() as isize {
                sent += 1;
            }
            // Paced: request i leaves at i / rate seconds.
            let due = Duration::from_secs_f64(f64::from(i + 1) / f64::from(rate));
            if let Some(wait) = due.checked_sub(t0.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        // SAFETY: closing the socket this thread opened.
        unsafe { libc::close(fd) };
        sent
    })
}

/// Resident set size of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// How long `swanctl --initiate` takes to bring the tunnel up.
fn connect(charon: &Charon) -> Duration {
    let t = Instant::now();
    let out = charon.swanctl(&["--initiate", "--child", "net", "--timeout", "30"]);
    let d = t.elapsed();
    assert!(out.contains("initiate completed successfully"), "{out}");
    d
}

fn terminate(charon: &Charon) {
    assert!(charon
        .swanctl(&["--terminate", "--ike", "gw"])
        .contains("terminate completed successfully"));
}

/// What each stage between the wire and the IKE core did with the punted datagrams: the
/// port (the kernel's drops), worker 0's punt rings (main lane and cookie lane), the data
/// plane's link to the control process (its backlogs), the control plane's admission (`ike`
/// view: drops and answers by reason), and on the way back the frames the worker could not
/// build.
fn punt_stages(dp: &serde_json::Value, ike: &serde_json::Value) -> String {
    let n = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or(0);
    let (drops, handed) = (&dp["drops"], &dp["handed_off"]);
    format!(
        "stages: port {ports}\n\
         \x20 worker 0: punted {} (cookie lane {}), punt ring full {}, cookie lane full {}, \
         no control {}, no buffer room (sending) {}, IKE sent {}\n\
         \x20 data plane -> control link: backlog oldest dropped {}, cookie backlog oldest \
         dropped {}, no control {}\n\
         \x20 control: {ike}",
        n(handed, "ike_punted"),
        n(handed, "ike_punted_cookie"),
        n(drops, "ike_punt_full"),
        n(drops, "ike_punt_cookie_full"),
        n(drops, "ike_no_control"),
        n(drops, "no_buffer_room"),
        n(&dp["traffic"], "ike_sent"),
        n(drops, "ike_punt_oldest_dropped"),
        n(drops, "ike_punt_cookie_oldest_dropped"),
        n(drops, "ike_punt_no_control"),
        ports = dp["ports"],
    )
}

/// The COOKIE notifies (type 16390) the gateway sent, in a capture.
fn cookies_in(pcap: &Path) -> usize {
    let out = Command::new("tshark")
        .args([
            "-r",
            pcap.to_str().unwrap(),
            "-Y",
            "ip.src == 192.0.2.1 && isakmp.notify.msgtype == 16390",
            "-T",
            "fields",
            "-e",
            "frame.number",
        ])
        .output()
        .expect("tshark -r");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[test]
fn a_client_connects_through_a_spoofed_ike_sa_init_flood() {
    if !strongswan_or_skip("ike_flood_netns", &["tshark"]) {
        return;
    }
    let dir = scratch("ike_flood_netns");
    let lab = ScriptLab::up(
        "rw-up",
        "rw-down",
        &format!("rgf{}", std::process::id() % 100_000),
    );
    // ROAMGATE_FLOOD_UNDEFENDED=1 turns cookies and caps off, to see the bounds below fail.
    let mut text = std::fs::read_to_string(root().join("configs/interop-gw.yaml")).unwrap();
    if std::env::var_os("ROAMGATE_FLOOD_UNDEFENDED").is_some() {
        text.push_str(
            "  cookie_threshold: 1000000\n  half_open_max: 1000000\n  half_open_per_source: 1000000\n",
        );
    }
    let cfg = dir.join("gw.yaml");
    std::fs::write(&cfg, text).unwrap();
    let shm = dir.join("control.shm");
    let sock = dir.join("control.sock");
    let ctl = NsProcess::spawn(
        &lab.ns("gw"),
        &[
            BIN.as_str(),
            "control",
            "--config",
            cfg.to_str().unwrap(),
            "--shm",
            shm.to_str().unwrap(),
            "--socket",
            sock.to_str().unwrap(),
            "--seq-state",
            dir.join("gw.seq-state").to_str().unwrap(),
            "--metrics",
            METRICS,
        ],
        "control",
    );
    let ctl_pid = ctl.child.as_ref().map(|c| c.id()).expect("control pid");
    wait_for("the control channel", 10, || shm.exists());
    let dp_sock = dir.join("dataplane.sock");
    let _dp = NsProcess::spawn(
        &lab.ns("gw"),
        &[
            BIN.as_str(),
            "dataplane",
            "--config",
            cfg.to_str().unwrap(),
            "--shm",
            shm.to_str().unwrap(),
            "--socket",
            dp_sock.to_str().unwrap(),
            "--status-secs",
            "0",
            "--idle-sleep-us",
            "50",
        ],
        "dataplane",
    );
    let charon = Charon::start_with(
        &lab.ns("rw"),
        &dir.join("rw"),
        &swanctl_conf("rw-psk.swanctl.conf"),
    );
    std::thread::sleep(Duration::from_millis(500));

    // Calm: the client's connect time (the first run warms both ends up; the second counts).
    connect(&charon);
    assert_eq!(pings(&lab.ns("rw"), "10.9.0.10", 2), 2);
    terminate(&charon);
    let calm = connect(&charon);
    terminate(&charon);
    std::thread::sleep(Duration::from_millis(300));
    let rss_before = rss_kib(ctl_pid);

    // The flood, captured on the client's link.
    let pcap = dir.join("rw-link.pcap");
    let capture = Capture::start(
        &lab.ns("rw"),
        "eth0",
        "udp port 500 or udp port 4500",
        &pcap,
    );
    let started = Arc::new(AtomicBool::new(false));
    let t_flood = Instant::now();
    let sender = flood(lab.ns("rw"), FLOOD, RATE, started.clone());
    wait_for("the flood to start", 10, || started.load(Ordering::Relaxed));
    // A second into it (10,000 requests), the client connects.
    std::thread::sleep(Duration::from_secs(1));
    let during = connect(&charon);
    assert_eq!(
        pings(&lab.ns("rw"), "10.9.0.10", 2),
        2,
        "traffic during the flood"
    );
    let sent = sender.join().expect("flood thread");
    let flood_secs = t_flood.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    let rss_after = rss_kib(ctl_pid);
    let view = ask(&sock, "ike");
    let dp_stats = ask(&dp_sock, "stats");
    let url = format!("http://{METRICS}/metrics");
    let scraped = roamgate_tests::netns::in_ns(&lab.ns("gw"), &["curl", "-sf", &url]);
    let _ = capture.finish();
    let cookies = cookies_in(&pcap);

    let m = &view["ike_messages"];
    println!(
        "flood: {sent} spoofed IKE_SA_INIT in {flood_secs:.1} s; gateway: {} cookies sent, {} valid and {} invalid received, {} half-open now; capture: {cookies} COOKIE answers",
        m["cookies_sent"], m["cookies_valid"], m["cookies_invalid"], view["half_open"]
    );
    println!(
        "control process RSS: {} KiB before, {} KiB after (+{} KiB)",
        rss_before,
        rss_after,
        rss_after.saturating_sub(rss_before)
    );
    println!(
        "client connect time: {:.3} s calm, {:.3} s during the flood ({:.1}x)",
        calm.as_secs_f64(),
        during.as_secs_f64(),
        during.as_secs_f64() / calm.as_secs_f64().max(1e-3)
    );

    // Where IKE could be lost, stage by stage (`roamgate stats` of the data plane, the
    // control plane's `ike` view): printed always, and with every assertion below.
    let stages = punt_stages(&dp_stats, m);
    println!("{stages}");

    assert_eq!(sent, FLOOD, "the kernel took every spoofed request");
    assert!(
        m.get("init_malformed").is_none() && m.get("init_missing_payload").is_none(),
        "the spoofed requests were well formed: {m}"
    );
    assert!(
        cookies as u64 >= u64::from(FLOOD) / 2,
        "cookies demanded: {cookies} COOKIE answers in the capture\n{stages}"
    );
    assert!(
        m["cookies_valid"].as_u64() >= Some(1),
        "the client echoed its cookie: {m}\n{stages}"
    );
    assert!(
        rss_after.saturating_sub(rss_before) < 16 * 1024,
        "control RSS grew from {rss_before} to {rss_after} KiB"
    );
    // Generous: a debug build, two shared cores and a capture running. Without cookies and
    // caps the client waits behind thousands of Diffie-Hellman computations (seconds).
    assert!(
        during < calm * 10 + Duration::from_millis(500),
        "connect during the flood {during:?} vs {calm:?} calm\n{stages}"
    );
    // The client's cookie echo took the cookie lane (strongSwan puts the COOKIE first, as
    // RFC 7296 2.6 says).
    assert!(
        dp_stats["handed_off"]["ike_punted_cookie"].as_u64() >= Some(1),
        "no cookie echo on the cookie lane\n{stages}"
    );
    // `control --metrics`, parsed by an independent reader, says what the view says: the
    // cookies demanded, the three handshakes the client made (the spoofed requests never
    // complete one), the half-open IKE SAs.
    assert!(scraped.status.success(), "curl {url}: {scraped:?}");
    let text = String::from_utf8_lossy(&scraped.stdout).into_owned();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("the metrics parse");
    let metric = |name: &str| -> u64 {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get("gateway") == Some("gw"))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v as u64,
                _ => u64::MAX,
            })
            .unwrap_or_else(|| panic!("no {name}:\n{text}"))
    };
    assert_eq!(
        Some(metric("roamgate_ike_cookies_sent_total")),
        m["cookies_sent"].as_u64()
    );
    assert!(metric("roamgate_ike_cookies_sent_total") >= cookies as u64);
    assert_eq!(metric("roamgate_ike_handshakes_completed_total"), 3, "{m}");
    assert_eq!(
        Some(metric("roamgate_ike_handshakes_completed_total")),
        m["handshakes_completed"].as_u64()
    );
    assert_eq!(
        Some(metric("roamgate_ike_half_open")),
        view["half_open"].as_u64()
    );
    drop(charon);
}
