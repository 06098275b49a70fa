//! GCM nonces across restarts of a statically keyed gateway: gateway A of the namespace lab
//! (configs/netns-a.yaml, static keys) is killed with SIGKILL and started again three times
//! while a host behind it pings through the tunnel every 10 ms. A capture of what A puts on
//! the internet link is audited: the (SPI, sequence number) of every ESP frame, which is the
//! GCM nonce under the SA's key, must never appear twice, and traffic must flow after every
//! restart. The first test restarts `roamgate dataplane --config`, which keeps the sequence
//! state itself; the second kills the data plane child of `roamgate run`, whose control
//! process keeps it.
//!
//! Needs root (prints a SKIP line otherwise; CI runs as root), iproute2, ethtool, ping and
//! tshark.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use roamgate_tests::netns::{root_or_skip, Capture, DataplaneProcess, NetnsLab, NsProcess};
use roamgate_tests::{have_tool, root, scratch};

/// The binary under test: `ROAMGATE_BIN` (the release build `.ci/run` makes) or this build's.
static BIN: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| roamgate_tests::roamgate_bin(env!("CARGO_BIN_EXE_roamgate")));

/// One lab at a time: the machine has two cores, and each lab runs two busy gateways.
static SERIAL: Mutex<()> = Mutex::new(());

fn tools_present() -> bool {
    have_tool("ip", &["-V"])
        && have_tool("ethtool", &["--version"])
        && have_tool("ping", &["-V"])
        && have_tool("tshark", &["--version"])
}

fn config(side: &str) -> PathBuf {
    root().join(format!("configs/netns-{side}.yaml"))
}

/// (SPI, sequence number) of every ESP frame in `pcap`, in capture order.
fn esp_nonces(pcap: &Path) -> Vec<(u32, u32)> {
    let out = Command::new("tshark")
        .args([
            "-r",
            pcap.to_str().expect("utf-8"),
            "-Y",
            "esp",
            "-T",
            "fields",
            "-e",
            "esp.spi",
            "-e",
            "esp.sequence",
        ])
        .output()
        .expect("tshark -r");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (spi, seq) = l.split_once('\t')?;
            let spi = u32::from_str_radix(spi.trim().trim_start_matches("0x"), 16).ok()?;
            Some((spi, seq.trim().parse().ok()?))
        })
        .collect()
}

/// The (SPI, sequence number) pairs that were sent more than once, with their counts.
fn repeated(nonces: &[(u32, u32)]) -> Vec<((u32, u32), usize)> {
    let mut seen: HashMap<(u32, u32), usize> = HashMap::new();
    for n in nonces {
        *seen.entry(*n).or_default() += 1;
    }
    let mut dup: Vec<_> = seen.into_iter().filter(|(_, c)| *c > 1).collect();
    dup.sort();
    dup
}

/// Pings through the tunnel until three in a row come back (the restarted gateway is up and
/// its peer accepts its new sequence numbers), within `secs`.
fn traffic_flows(lab: &NetnsLab, secs: u64) -> bool {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(secs) {
        if lab.ping("lana", "10.2.0.10", 3) == 3 {
            return true;
        }
    }
    false
}

/// Gateway A, stopped with SIGTERM when it goes, an assertion failing or not: `roamgate run`
/// stops its children on SIGTERM, where SIGKILL would leave them running.
struct GatewayA(Option<DataplaneProcess>);

impl Drop for GatewayA {
    fn drop(&mut self) {
        if let Some(g) = self.0.take() {
            let _ = g.proc.stop("TERM", Duration::from_secs(20));
        }
    }
}

/// Kills what must restart in gateway A (`gw`, which it may replace) and waits until it is
/// started again.
type Restart<'a> = &'a dyn Fn(&NetnsLab, &Path, &mut Option<DataplaneProcess>);

/// The lab, gateway B, a capture of A's frames on the internet link and a 100 pps ping from
/// A's LAN; `start_a` starts gateway A, `restart_a` kills and restarts it, three times; then
/// the audit of the capture.
fn three_restarts(
    test: &str,
    start_a: &dyn Fn(&NetnsLab, &Path) -> DataplaneProcess,
    restart_a: Restart<'_>,
) {
    let dir = scratch(test);
    let lab = NetnsLab::up(&format!("sq{}", std::process::id() % 100_000));
    let _gw_b = DataplaneProcess::start(
        Path::new(BIN.as_str()),
        &lab.ns("gwb"),
        &config("b"),
        &dir,
        "gw-b",
    );
    let mut gw_a = GatewayA(Some(start_a(&lab, &dir)));
    let capture = Capture::start(
        &lab.ns("net"),
        "br0",
        "ether src 02:00:00:00:aa:01",
        &dir.join("internet.pcap"),
    );
    assert!(
        traffic_flows(&lab, 20),
        "no traffic through the first start"
    );
    let pinger = NsProcess::spawn(
        &lab.ns("lana"),
        &["ping", "-q", "-i", "0.01", "-w", "120", "10.2.0.10"],
        "ping -i 0.01",
    );
    for restart in 1..=3 {
        std::thread::sleep(Duration::from_millis(2500));
        restart_a(&lab, &dir, &mut gw_a.0);
        assert!(
            traffic_flows(&lab, 30),
            "no traffic after restart {restart}"
        );
    }
    std::thread::sleep(Duration::from_millis(1000));
    let _ = pinger.stop("INT", Duration::from_secs(5));
    let _ = capture.finish();
    let nonces = esp_nonces(&dir.join("internet.pcap"));
    let dup = repeated(&nonces);
    println!(
        "{test}: {} ESP frames from gateway A across 3 restarts, {} (SPI, sequence number) \
         pairs sent more than once",
        nonces.len(),
        dup.len()
    );
    assert!(
        nonces.len() > 400,
        "only {} ESP frames captured",
        nonces.len()
    );
    assert!(
        dup.is_empty(),
        "GCM nonces used twice ({} pairs, the first: {:?})",
        dup.len(),
        &dup[..dup.len().min(10)]
    );
    // Every restart resumed far past what the one before sent (the first start began at 1).
    let mut runs = 0;
    let mut last = 0;
    for (_, seq) in nonces.iter().filter(|(spi, _)| *spi == 0xa001) {
        if *seq > last + 1_000 {
            runs += 1;
        }
        assert!(*seq > last, "sequence number {seq} after {last}");
        last = *seq;
    }
    assert_eq!(runs, 3, "restarts that jumped ahead");
}

#[test]
fn a_static_gateway_killed_three_times_never_sends_a_nonce_twice() {
    let test = "seq_restart_dataplane";
    if !root_or_skip(test) || !tools_present() {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let start = |lab: &NetnsLab, dir: &Path| {
        DataplaneProcess::start(
            Path::new(BIN.as_str()),
            &lab.ns("gwa"),
            &config("a"),
            dir,
            "gw-a",
        )
    };
    let restart = |lab: &NetnsLab, dir: &Path, gw: &mut Option<DataplaneProcess>| {
        if let Some(old) = gw.take() {
            let _ = old.proc.stop("KILL", Duration::from_secs(5));
        }
        *gw = Some(start(lab, dir));
    };
    three_restarts(test, &start, &restart);
}

#[test]
fn run_restarts_its_data_plane_past_what_the_dead_one_sent() {
    let test = "seq_restart_run";
    if !root_or_skip(test) || !tools_present() {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let start = |lab: &NetnsLab, dir: &Path| {
        DataplaneProcess::start_sub(
            Path::new(BIN.as_str()),
            "run",
            &lab.ns("gwa"),
            &config("a"),
            dir,
            "gw-a",
            &["--shm", dir.join("gw-a.shm").to_str().expect("utf-8")],
        )
    };
    let restart = |_: &NetnsLab, _: &Path, gw: &mut Option<DataplaneProcess>| {
        let run = gw
            .as_ref()
            .and_then(|g| g.proc.child.as_ref())
            .expect("run is running")
            .id();
        let child = data_plane_child(run).expect("run's data plane child");
        let _ = Command::new("kill")
            .args(["-KILL", &child.to_string()])
            .status();
        // The supervisor starts a new one: a new pid.
        let t = Instant::now();
        while data_plane_child(run).is_none_or(|p| p == child) {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "run did not restart its data plane"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    three_restarts(test, &start, &restart);
}

/// The pid of the `roamgate dataplane` child of `roamgate run` (pid `run`), if there is one.
fn data_plane_child(run: u32) -> Option<u32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: the comm may hold spaces, so read after its ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let is_dataplane = cmdline.split(|b| *b == 0).any(|a| a == b"dataplane");
        if ppid == Some(run) && is_dataplane {
            return Some(pid);
        }
    }
    None
}
