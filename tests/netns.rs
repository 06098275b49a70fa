//! The network-namespace lab for end-to-end tests on real ports: namespaces and veths from
//! `vendor-scripts/netns-lab.sh`, `roamgate dataplane` processes in the gateway namespaces,
//! and the host tools (ping, iperf3, tshark) in the others. Everything is torn down on drop,
//! and only processes started here are ever signalled.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::root;

/// True when running as root; otherwise prints the SKIP line the tests promise.
pub fn root_or_skip(test: &str) -> bool {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_owned))
        })
        .unwrap_or_default();
    if uid == "0" {
        return true;
    }
    if std::env::var_os("ROAMGATE_REQUIRE_ROOT").is_some() {
        panic!("{test} needs root (ROAMGATE_REQUIRE_ROOT is set)");
    }
    println!("SKIP: {test} needs root (network namespaces, AF_XDP)");
    false
}

/// Runs `cmd` in namespace `ns`, returning its output.
pub fn in_ns(ns: &str, cmd: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(cmd)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip netns exec {ns} {cmd:?}: {e}"))
}

/// Runs `cmd` (split on spaces) in `ns`; fails the test if it fails.
pub fn sh(ns: &str, cmd: &str) {
    let out = in_ns(ns, &cmd.split(' ').collect::<Vec<_>>());
    assert!(
        out.status.success(),
        "{ns}: {cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until a UDP socket is bound to `port` in namespace `ns` (a receiver started as a
/// process is not ready when its process is: datagrams that come before its bind are lost at
/// the host, not in the tunnel). Panics after `timeout`.
pub fn wait_udp_bound(ns: &str, port: u16, timeout: std::time::Duration) {
    let t = std::time::Instant::now();
    let filter = format!("sport = :{port}");
    loop {
        let out = in_ns(ns, &["ss", "-Hunl", &filter]);
        if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
            return;
        }
        assert!(
            t.elapsed() < timeout,
            "no UDP socket bound to port {port} in {ns} after {timeout:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A lab of five namespaces named `PFX-lana`, `PFX-gwa`, `PFX-net`, `PFX-gwb`, `PFX-lanb`.
pub struct NetnsLab {
    pub prefix: String,
}

impl NetnsLab {
    pub fn up(prefix: &str) -> NetnsLab {
        let out = Command::new("bash")
            .arg(root().join("vendor-scripts/netns-lab.sh"))
            .args(["up", prefix])
            .output()
            .expect("run netns-lab.sh");
        assert!(
            out.status.success(),
            "netns-lab.sh up failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        NetnsLab {
            prefix: prefix.to_owned(),
        }
    }

    pub fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// Pings `dst` from host namespace `from` (`lana`/`lanb`); returns replies received.
    pub fn ping(&self, from: &str, dst: &str, count: u32) -> u32 {
        let c = count.to_string();
        let out = in_ns(
            &self.ns(from),
            &["ping", "-c", &c, "-i", "0.2", "-W", "2", dst],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| {
                let (_, rest) = l.split_once(" packets transmitted, ")?;
                rest.split_whitespace().next()?.parse().ok()
            })
            .unwrap_or(0)
    }

    /// Frames written raw onto the internet bridge port that leads to gateway `gw` ("a"/"b").
    pub fn inject(&self, gw: &str, frames: &[Vec<u8>]) {
        let hex: Vec<String> = frames
            .iter()
            .map(|f| f.iter().map(|b| format!("{b:02x}")).collect())
            .collect();
        let dev = format!("to-{gw}");
        let script = "import socket,sys\n\
                      s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW)\n\
                      s.bind((sys.argv[1],0))\n\
                      for h in sys.argv[2:]: s.send(bytes.fromhex(h))\n";
        let mut args = vec!["python3", "-c", script, &dev];
        args.extend(hex.iter().map(String::as_str));
        let out = in_ns(&self.ns("net"), &args);
        assert!(
            out.status.success(),
            "injecting frames failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for NetnsLab {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(root().join("vendor-scripts/netns-lab.sh"))
            .args(["down", &self.prefix])
            .status();
    }
}

/// A process started in a namespace (`ip netns exec` execs, so its pid is the program's).
pub struct NsProcess {
    pub child: Option<Child>,
    pub what: String,
    /// Reaped by [`is_running`](Self::is_running): its pid may belong to another process now,
    /// so it is never signalled again.
    reaped: bool,
}

impl NsProcess {
    pub fn spawn(ns: &str, cmd: &[&str], what: &str) -> NsProcess {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(cmd)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        NsProcess {
            child: Some(child),
            what: what.to_owned(),
            reaped: false,
        }
    }

    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            if self.reaped {
                return;
            }
            // Not reaped: the pid is still this child's (a zombie at worst).
            let _ = Command::new("kill")
                .args([&format!("-{sig}"), &c.id().to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => {
                let running = matches!(c.try_wait(), Ok(None));
                self.reaped |= !running;
                running
            }
            None => false,
        }
    }

    /// Waits (at most `within`) for the process to end by itself, then stops it with SIGTERM
    /// if it has not; collects everything it printed: (exit status success, stdout, stderr).
    pub fn wait(mut self, within: Duration) -> (bool, String, String) {
        let t = Instant::now();
        while self.is_running() && t.elapsed() < within {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.stop("TERM", Duration::from_secs(5))
    }

    /// Signals the process and collects everything it printed.
    pub fn stop(mut self, sig: &str, wait: Duration) -> (bool, String, String) {
        self.signal(sig);
        let mut c = self.child.take().expect("child");
        let t = Instant::now();
        while t.elapsed() < wait {
            if let Ok(Some(_)) = c.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if matches!(c.try_wait(), Ok(None)) {
            let _ = c.kill();
        }
        let out = c.wait_with_output().expect("collect output");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for NsProcess {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A `roamgate dataplane` in a gateway namespace.
pub struct DataplaneProcess {
    pub proc: NsProcess,
    pub stats_file: PathBuf,
    /// Its view socket (`roamgate stats|sa --socket`).
    pub socket: PathBuf,
}

impl DataplaneProcess {
    /// Starts `roamgate dataplane` and waits until its SAs are installed (its first stats
    /// file appears).
    pub fn start(bin: &Path, ns: &str, config: &Path, dir: &Path, name: &str) -> DataplaneProcess {
        Self::start_sub(bin, "dataplane", ns, config, dir, name, &[])
    }

    /// As [`start`](Self::start) for another subcommand (`run`).
    pub fn start_sub(
        bin: &Path,
        sub: &str,
        ns: &str,
        config: &Path,
        dir: &Path,
        name: &str,
        extra: &[&str],
    ) -> DataplaneProcess {
        let stats_file = dir.join(format!("{name}.stats.json"));
        let _ = std::fs::remove_file(&stats_file);
        let socket = dir.join(format!("{name}.sock"));
        // The static SAs' sequence state of this test's gateway, not the one next to the
        // shipped config.
        let seq_state = dir.join(format!("{name}.seq-state"));
        let mut proc = NsProcess::spawn(
            ns,
            &[
                bin.to_str().expect("utf-8 path"),
                sub,
                "--config",
                config.to_str().expect("utf-8 path"),
                "--stats-file",
                stats_file.to_str().expect("utf-8 path"),
                "--status-secs",
                "0",
                "--idle-sleep-us",
                "50",
                "--socket",
                socket.to_str().expect("utf-8 path"),
                "--seq-state",
                seq_state.to_str().expect("utf-8 path"),
            ]
            .iter()
            .chain(extra)
            .copied()
            .collect::<Vec<_>>(),
            name,
        );
        let t = Instant::now();
        while !stats_file.exists() {
            if !proc.is_running() || t.elapsed() > Duration::from_secs(20) {
                let (_, out, err) = proc.stop("TERM", Duration::from_secs(1));
                panic!("{name} did not come up:\n{out}\n{err}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        DataplaneProcess {
            proc,
            stats_file,
            socket,
        }
    }

    /// The latest counters it published.
    pub fn stats(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(&self.stats_file).expect("stats file");
        serde_json::from_str(&text).expect("stats file is JSON")
    }

    /// SIGKILLs it and the processes it started (its children, by the pids the kernel lists
    /// for it: `roamgate edge`'s edge-link and data plane), the supervisor first so that it
    /// restarts nothing; a node that dies, not one that says goodbye. Returns what it printed.
    pub fn kill9_with_children(mut self) -> String {
        let pid = self.proc.child.as_ref().map(std::process::Child::id);
        let children: Vec<String> = pid.map(children_of).unwrap_or_default();
        if let Some(c) = self.proc.child.as_mut() {
            let _ = c.kill();
        }
        for c in &children {
            let _ = std::process::Command::new("kill").args(["-9", c]).status();
        }
        let (_, out, err) = self.proc.stop("KILL", Duration::from_secs(5));
        out + "\n" + &err
    }

    /// Stops it with SIGTERM; returns the final counters it printed.
    pub fn stop(self) -> serde_json::Value {
        self.stop_with_output().0
    }

    /// Stops it with SIGTERM; returns the final counters and everything it printed.
    pub fn stop_with_output(self) -> (serde_json::Value, String) {
        let what = self.proc.what.clone();
        let (ok, out, err) = self.proc.stop("TERM", Duration::from_secs(10));
        assert!(ok, "{what} did not exit cleanly:\n{out}\n{err}");
        let last = out.lines().last().unwrap_or_default();
        let v = serde_json::from_str(last)
            .unwrap_or_else(|e| panic!("{what}'s last line is not JSON ({e}):\n{out}"));
        // What it said on either stream (status and log lines go to stderr).
        (v, out + "\n" + &err)
    }
}

/// The pids whose parent is `pid` (from /proc/N/stat).
pub fn children_of(pid: u32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let name = e.ok()?.file_name().into_string().ok()?;
        name.parse::<u32>().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{name}/stat")).ok()?;
        // pid (comm) state ppid ...: comm may hold spaces, so read after the last ')'.
        let ppid: u32 = stat
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        (ppid == pid).then_some(name)
    })
    .collect()
}

/// A tshark capture in a namespace, written to a pcap file.
pub struct Capture {
    proc: NsProcess,
    pub file: PathBuf,
}

impl Capture {
    /// Captures on `iface` what matches the capture `filter` (pcap syntax; "" for all).
    pub fn start(ns: &str, iface: &str, filter: &str, file: &Path) -> Capture {
        Self::start_snap(ns, iface, filter, file, None)
    }

    /// [`Capture::start`] keeping at most `snaplen` bytes of each frame (headers only: a
    /// capture of a bulk transfer that keeps up on a loaded machine).
    pub fn start_snap(
        ns: &str,
        iface: &str,
        filter: &str,
        file: &Path,
        snaplen: Option<u32>,
    ) -> Capture {
        let snap = snaplen.map(|n| n.to_string());
        let mut cmd = vec![
            "tshark",
            "-i",
            iface,
            "-w",
            file.to_str().expect("utf-8"),
            "-q",
        ];
        if let Some(s) = &snap {
            cmd.extend(["-s", s.as_str()]);
        }
        if !filter.is_empty() {
            cmd.extend(["-f", filter]);
        }
        let mut proc = NsProcess::spawn(ns, &cmd, "tshark");
        // tshark says "Capturing on 'br0'" on stderr once it captures.
        let stderr = proc
            .child
            .as_mut()
            .and_then(|c| c.stderr.take())
            .expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let t = Instant::now();
        loop {
            match lines.next() {
                Some(Ok(l)) if l.contains("Capturing on") => break,
                Some(Ok(_)) => {}
                _ => panic!("tshark did not start capturing on {iface} in {ns}"),
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "tshark start timed out"
            );
        }
        // Keep draining stderr so tshark never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        Capture {
            proc,
            file: file.to_owned(),
        }
    }

    /// Ends the capture (the file complete) without reading it.
    pub fn stop(self) {
        let _ = self.proc.stop("INT", Duration::from_secs(10));
    }

    /// Stops the capture; returns `frame.protocols` of every captured frame.
    pub fn finish(self) -> Vec<String> {
        let file = self.file.clone();
        let _ = self.proc.stop("INT", Duration::from_secs(10));
        let out = Command::new("tshark")
            .args([
                "-r",
                file.to_str().expect("utf-8"),
                "-T",
                "fields",
                "-e",
                "frame.protocols",
            ])
            .output()
            .expect("tshark -r");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// The nonce audit of an ESP capture ([`esp_audit`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EspAudit {
    /// ESP frames (bare, or in UDP 4500).
    pub esp: u64,
    /// Of them, those from the gateway's address.
    pub from_gw: u64,
    /// Frames whose (SPI, sequence number) an earlier frame had: a GCM nonce sent twice.
    pub dup_seq: u64,
    /// IKE messages from the gateway's address.
    pub ike_from_gw: u64,
}

/// Reads capture `pcap` (tshark): every ESP frame by (SPI, sequence number), and what came
/// from gateway address `gw`.
pub fn esp_audit(pcap: &Path, gw: &str) -> EspAudit {
    let out = Command::new("tshark")
        .args([
            "-r",
            pcap.to_str().expect("utf-8"),
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
            "-e",
            "isakmp.ispi",
        ])
        .output()
        .expect("tshark -r");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut seen = std::collections::HashSet::new();
    let mut a = EspAudit::default();
    for line in text.lines() {
        let f: Vec<&str> = line.split(',').collect();
        let field = |i: usize| f.get(i).copied().unwrap_or("");
        let (src, spi, seq, ike) = (field(0), field(1), field(2), field(3));
        if !ike.is_empty() && src == gw {
            a.ike_from_gw += 1;
        }
        if spi.is_empty() || seq.is_empty() {
            continue;
        }
        a.esp += 1;
        if src == gw {
            a.from_gw += 1;
        }
        if !seen.insert((spi.to_owned(), seq.to_owned())) {
            a.dup_seq += 1;
        }
    }
    a
}

/// One namespace holding the two veths every shipped gateway config names (`lan`, `wan`;
/// their peers `lanp`, `wanp` stay unused), for tests that start a gateway and need nothing
/// behind it. A leftover of that name is removed first; dropping it removes the namespace.
pub struct GatewayNamespace {
    name: String,
}

impl GatewayNamespace {
    pub fn up(name: &str) -> GatewayNamespace {
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        let sh = |args: &[&str]| {
            let st = Command::new("ip").args(args).status().unwrap();
            assert!(st.success(), "ip {args:?}");
        };
        sh(&["netns", "add", name]);
        for (dev, peer) in [("lan", "lanp"), ("wan", "wanp")] {
            sh(&[
                "-n", name, "link", "add", dev, "type", "veth", "peer", "name", peer,
            ]);
            sh(&["-n", name, "link", "set", dev, "up"]);
            sh(&["-n", name, "link", "set", peer, "up"]);
        }
        GatewayNamespace {
            name: name.to_owned(),
        }
    }
}

impl Drop for GatewayNamespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
