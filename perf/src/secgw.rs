//! The perf lab's baseline: DPDK 22.11's example `ipsec-secgw`, built by `perf/secgw/build.sh`
//! and run on virtual devices, one lcore, no NIC, no hugepages.
//!
//! The command line [`run`] uses (found by hand, see the patch header in perf/secgw/):
//!
//! ```text
//! ipsec-secgw -l LCORE --no-huge --no-pci -m 1024 --file-prefix UNIQUE
//!     --vdev net_pcap0,rx_pcap=INPUT,infinite_rx=1     port 0: the input
//!     --vdev net_null0,no-rx=1                         port 1: the output (rate runs)
//!        or net_pcap1,tx_pcap=OUTPUT                   port 1: the output (correctness)
//!     --vdev crypto_aesni_gcm0                         ipsec-mb AES-GCM
//!     -- -p 0x3 -P -u MASK --config (0,0,LCORE),(1,0,LCORE) -f secgw.cfg [-l]
//! ```
//!
//! Encrypt: port 0 is protected (plaintext in) and port 1 unprotected (`-u 0x2`); decrypt: the
//! reverse (`-u 0x1`), so input is always port 0 and output port 1. Both ports are polled, as a
//! gateway polls both sides (and the librte_ipsec path needs an lcore on the unprotected port
//! to create the inbound session); `no-rx=1` keeps net_null from inventing packets.
//!
//! Rates come from DPDK telemetry (`/ethdev/stats,N` on the v2 socket) sampled at two
//! instants. 22.11's net_null does not count bytes, so a rate run has no tx byte rate.
//!
//! The SA is raw ESP (no UDP encapsulation), IPv4 tunnel mode, AES-128-GCM, no ESN (the
//! example's default); the legacy path does no anti-replay check, so a looping pcap of ESP
//! frames keeps being opened. Keys go into a 0600 config file in the work directory and are
//! never printed.

use std::fmt;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use control::config::GatewayPlan;
use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
use nix::unistd::Pid;
use pipeline::crypto::AeadAlg;
use pipeline::esp::sa::{SaKeys, SaParams};
use pipeline::ids::{SaId, Spi};
use pipeline::msg::Direction;
use pipeline::spd::{Action, PortRange, Prefix, Rule, Selector};

/// Memory for the EAL (`-m`, MB, no hugepages). 512 is the least that starts; 256 fails in
/// the LPM allocation.
const EAL_MEM_MB: u32 = 1024;
/// How long EAL init and config parsing may take.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long SIGINT may take to close the ports (and flush a pcap).
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// The log line of the poll loop starting.
const MAIN_LOOP: &str = "entering main loop";

/// One IPv4 tunnel-mode SA, as its sender sees it: packets from `protected_src` to
/// `protected_dst` travel in ESP from `tunnel_src` to `tunnel_dst`. AES-128-GCM with a
/// 16-byte ICV (RFC 4106), raw ESP, 32-bit sequence numbers.
#[derive(Clone)]
pub struct SecgwSa {
    /// 1..=0x7fff_ffff: ipsec-secgw parses SPIs with `atoi`.
    pub spi: u32,
    pub key: [u8; 16],
    pub salt: [u8; 4],
    pub tunnel_src: Ipv4Addr,
    pub tunnel_dst: Ipv4Addr,
    /// IPv4 prefixes.
    pub protected_src: Prefix,
    pub protected_dst: Prefix,
}

impl fmt::Debug for SecgwSa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecgwSa")
            .field("spi", &format_args!("{:#x}", self.spi))
            .field("key", &"<redacted>")
            .field("tunnel_src", &self.tunnel_src)
            .field("tunnel_dst", &self.tunnel_dst)
            .field("protected_src", &self.protected_src)
            .field("protected_dst", &self.protected_dst)
            .finish()
    }
}

impl SecgwSa {
    fn check(&self) -> Result<(), String> {
        if self.spi == 0 || self.spi > 0x7fff_ffff {
            return Err(format!(
                "SPI {:#x}: ipsec-secgw takes 1..=0x7fffffff",
                self.spi
            ));
        }
        if !self.protected_src.addr().is_ipv4() || !self.protected_dst.addr().is_ipv4() {
            return Err("the protected prefixes must be IPv4".into());
        }
        Ok(())
    }

    /// The ipsec-secgw config file (ep0.cfg syntax): the SA in both directions with the same
    /// key, an SP rule per direction for the protected prefixes, routes for the tunnel peer
    /// and the protected destination out of port 1, and the next hop's MAC on port 1.
    /// Contains the key: write it where only the owner can read it.
    pub fn config_file(&self, next_hop_mac: [u8; 6]) -> Result<String, String> {
        self.check()?;
        let key: Vec<String> = self
            .key
            .iter()
            .chain(self.salt.iter())
            .map(|b| format!("{b:02x}"))
            .collect();
        let key = key.join(":");
        let mac: Vec<String> = next_hop_mac.iter().map(|b| format!("{b:02x}")).collect();
        let mac = mac.join(":");
        let spi = self.spi;
        let (psrc, pdst) = (self.protected_src, self.protected_dst);
        let (tsrc, tdst) = (self.tunnel_src, self.tunnel_dst);
        let mut s = String::from(
            "# roamgate perf lab (perf/src/secgw.rs): one IPv4 tunnel-mode SA, AES-128-GCM\n",
        );
        for dir in ["out", "in"] {
            s.push_str(&format!(
                "sp ipv4 {dir} esp protect {spi} pri 1 src {psrc} dst {pdst} \
                 sport 0:65535 dport 0:65535\n"
            ));
        }
        for dir in ["out", "in"] {
            s.push_str(&format!(
                "sa {dir} {spi} aead_algo aes-128-gcm aead_key {key} \
                 mode ipv4-tunnel src {tsrc} dst {tdst}\n"
            ));
        }
        s.push_str(&format!("rt ipv4 dst {tdst}/32 port 1\n"));
        s.push_str(&format!("rt ipv4 dst {pdst} port 1\n"));
        s.push_str(&format!("neigh port 1 {mac}\n"));
        Ok(s)
    }

    /// The SA as a roamgate worker on one end sees it: `Outbound`, roamgate is the sender
    /// (local = `tunnel_src`); `Inbound`, the receiver (local = `tunnel_dst`). No UDP
    /// encapsulation, no ESN, replay window 1024.
    pub fn sa_params(&self, dir: Direction, id: SaId) -> SaParams {
        let mut keymat = [0u8; 20];
        keymat[..16].copy_from_slice(&self.key);
        keymat[16..].copy_from_slice(&self.salt);
        let keys = SaKeys::from_keymat(AeadAlg::AesGcm128, &keymat).expect("16 + 4 bytes");
        let (local, remote, local_ts, remote_ts) = match dir {
            Direction::Outbound => (
                self.tunnel_src,
                self.tunnel_dst,
                self.protected_src,
                self.protected_dst,
            ),
            Direction::Inbound => (
                self.tunnel_dst,
                self.tunnel_src,
                self.protected_dst,
                self.protected_src,
            ),
        };
        SaParams {
            id,
            spi: Spi(self.spi),
            keys,
            esn: false,
            replay_window: 1024,
            local: local.into(),
            remote: remote.into(),
            encap: None,
            local_ts,
            remote_ts,
            outer_ttl: 64,
            resume: Default::default(),
            checkpoint: None,
            lifetime: Default::default(),
        }
    }

    /// A data-plane plan for the roamgate gateway on one end of this SA (see
    /// [`sa_params`](Self::sa_params)); the sender also gets the SPD rule that protects the
    /// traffic.
    pub fn roamgate_plan(&self, dir: Direction) -> GatewayPlan {
        let id = SaId(0);
        let mut rules = Vec::new();
        if dir == Direction::Outbound {
            rules.push(Rule {
                id: 0,
                selector: Selector {
                    src: self.protected_src,
                    dst: self.protected_dst,
                    proto: None,
                    src_ports: PortRange::ANY,
                    dst_ports: PortRange::ANY,
                },
                action: Action::Protect(id),
            });
        }
        GatewayPlan {
            sas: vec![(dir, self.sa_params(dir, id))],
            rules,
            masquerade: None,
            weak: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecgwMode {
    /// Plaintext frames in on port 0 (protected), ESP out on port 1.
    Encrypt,
    /// ESP frames in on port 0 (unprotected), plaintext out on port 1.
    Decrypt,
}

/// Where the frames secgw sends go.
#[derive(Clone, Copy, Debug)]
pub enum SecgwOutput<'a> {
    /// `net_null`: dropped, counted (packets only). For rate runs.
    Null,
    /// `net_pcap` tx: written to this file (closed when secgw exits). For correctness runs.
    Pcap(&'a Path),
}

#[derive(Clone, Debug)]
pub struct SecgwRun<'a> {
    pub binary: &'a Path,
    pub mode: SecgwMode,
    pub sa: &'a SecgwSa,
    /// Plaintext (encrypt) or ESP (decrypt) Ethernet frames, classic pcap.
    pub input_pcap: &'a Path,
    /// Replay the input for ever (rate runs) or send it once (correctness runs: then the run
    /// also waits, after `measure`, until the output stops growing).
    pub repeat_input: bool,
    pub output: SecgwOutput<'a>,
    /// Destination MAC of the frames secgw sends.
    pub next_hop_mac: [u8; 6],
    /// The lcore (= CPU) secgw polls on.
    pub lcore: u32,
    /// Use the librte_ipsec code path (`-l`) instead of the example's legacy one.
    pub librte_ipsec: bool,
    /// From the start of the poll loop to the first sample.
    pub warmup: Duration,
    /// Between the two samples.
    pub measure: Duration,
    /// Config file, and scratch; created if missing.
    pub workdir: &'a Path,
}

#[derive(Clone, Debug)]
pub struct SecgwResult {
    /// Packets per second received on the input port over the measured interval.
    pub rx_pps: f64,
    /// Packets per second sent on the output port.
    pub tx_pps: f64,
    pub rx_bytes_per_s: f64,
    /// None when the output device does not count bytes (22.11's net_null).
    pub tx_bytes_per_s: Option<f64>,
    /// The measured interval, seconds.
    pub secs: f64,
    /// Totals at the end of the run: received on the input port, sent on the output port.
    pub rx_packets: u64,
    pub tx_packets: u64,
    /// Device error counters at the end (imissed + ierrors + oerrors + rx_nombuf, both
    /// ports). Packets secgw itself drops (policy, crypto failures) show only as
    /// `tx_packets < rx_packets`.
    pub errors: u64,
    /// secgw's stdout and stderr.
    pub log: String,
}

/// Builds (or finds up to date) the patched ipsec-secgw in `outdir`; returns the binary.
pub fn build(outdir: &Path) -> Result<PathBuf, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("secgw/build.sh");
    let out = Command::new("sh")
        .arg(&script)
        .arg(outdir)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed ({}):\n{}{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(outdir.join("ipsec-secgw"))
}

/// Why the baseline cannot be built here (DPDK's development files or the example source
/// missing), or None.
pub fn missing_tools() -> Option<String> {
    let dpdk = Command::new("pkg-config")
        .args(["--exists", "libdpdk"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !dpdk {
        return Some("DPDK development files (pkg-config libdpdk; Debian libdpdk-dev)".into());
    }
    let examples = std::env::var_os("DPDK_EXAMPLES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/share/dpdk/examples"));
    let src = examples.join("ipsec-secgw/ipsec-secgw.c");
    if !src.is_file() {
        return Some(format!(
            "DPDK's ipsec-secgw example source ({}; Debian dpdk-doc)",
            src.display()
        ));
    }
    None
}

/// Where DPDK puts the runtime directory of `prefix` (eal_create_runtime_dir): /var/run as
/// root, else $XDG_RUNTIME_DIR or /tmp.
pub fn runtime_dir(prefix: &str) -> PathBuf {
    let base = if nix::unistd::getuid().is_root() {
        PathBuf::from("/var/run")
    } else {
        std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/tmp"))
    };
    base.join("dpdk").join(prefix)
}

/// One port's counters from `/ethdev/stats,N`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    pub ipackets: u64,
    pub opackets: u64,
    pub ibytes: u64,
    pub obytes: u64,
    pub imissed: u64,
    pub ierrors: u64,
    pub oerrors: u64,
    pub rx_nombuf: u64,
}

impl PortStats {
    /// From a telemetry reply, `{"/ethdev/stats": {"ipackets": ..., ...}}`.
    pub fn parse(reply: &str) -> Result<Self, String> {
        let v: serde_json::Value =
            serde_json::from_str(reply).map_err(|e| format!("telemetry reply: {e}: {reply}"))?;
        let s = v
            .get("/ethdev/stats")
            .filter(|s| s.is_object())
            .ok_or_else(|| format!("telemetry reply without /ethdev/stats: {reply}"))?;
        let n = |k: &str| {
            s.get(k)
                .and_then(|x| x.as_u64())
                .ok_or_else(|| format!("telemetry reply without {k}: {reply}"))
        };
        Ok(PortStats {
            ipackets: n("ipackets")?,
            opackets: n("opackets")?,
            ibytes: n("ibytes")?,
            obytes: n("obytes")?,
            imissed: n("imissed")?,
            ierrors: n("ierrors")?,
            oerrors: n("oerrors")?,
            rx_nombuf: n("rx_nombuf")?,
        })
    }

    fn errors(&self) -> u64 {
        self.imissed + self.ierrors + self.oerrors + self.rx_nombuf
    }
}

/// A client of DPDK's telemetry v2 socket (SOCK_SEQPACKET: one message per command and per
/// reply).
pub struct Telemetry {
    sock: UnixDatagram,
    buf: Vec<u8>,
}

impl Telemetry {
    pub fn connect(path: &Path) -> Result<Self, String> {
        let fd = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| format!("telemetry socket: {e}"))?;
        // A connected SOCK_SEQPACKET socket sends and receives whole messages with
        // send(2)/recv(2), which is all UnixDatagram's send/recv do.
        let sock = UnixDatagram::from(fd);
        sock.connect(path)
            .map_err(|e| format!("connect {}: {e}", path.display()))?;
        sock.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let mut t = Telemetry {
            sock,
            buf: vec![0u8; 64 * 1024],
        };
        // The server greets with {"version": ..., "max_output_len": ...}.
        let hello = t.recv()?;
        if !hello.contains("\"version\"") {
            return Err(format!("unexpected telemetry greeting: {hello}"));
        }
        Ok(t)
    }

    fn recv(&mut self) -> Result<String, String> {
        let n = self
            .sock
            .recv(&mut self.buf)
            .map_err(|e| format!("telemetry recv: {e}"))?;
        if n == 0 {
            return Err("telemetry socket closed".into());
        }
        Ok(String::from_utf8_lossy(&self.buf[..n]).into_owned())
    }

    /// Sends one command (e.g. `/ethdev/stats,0`) and returns the JSON reply.
    pub fn query(&mut self, cmd: &str) -> Result<String, String> {
        self.sock
            .send(cmd.as_bytes())
            .map_err(|e| format!("telemetry send: {e}"))?;
        self.recv()
    }

    pub fn port_stats(&mut self, port: u16) -> Result<PortStats, String> {
        PortStats::parse(&self.query(&format!("/ethdev/stats,{port}"))?)
    }

    fn sample(&mut self) -> Result<(Instant, PortStats, PortStats), String> {
        let a = self.port_stats(0)?;
        let b = self.port_stats(1)?;
        Ok((Instant::now(), a, b))
    }
}

static RUNS: AtomicU32 = AtomicU32::new(0);

/// A path as a vdev argument value: devargs are split at commas.
fn devarg_path(p: &Path) -> Result<&str, String> {
    let s = p
        .to_str()
        .ok_or_else(|| format!("{} is not UTF-8", p.display()))?;
    if s.contains(',') || s.contains(char::is_whitespace) || s.is_empty() {
        return Err(format!(
            "{s:?}: a vdev path may not be empty or contain commas or spaces"
        ));
    }
    Ok(s)
}

/// The running secgw: killed (SIGKILL) if dropped before [`stop`](Self::stop), and its
/// runtime directory removed.
struct Running {
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    readers: Vec<thread::JoinHandle<()>>,
    runtime: PathBuf,
}

impl Running {
    fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGINT (secgw closes its ports, which flushes a pcap), then waits; SIGKILL after
    /// STOP_TIMEOUT. Returns the log.
    fn stop(&mut self) -> Result<String, String> {
        let Some(mut child) = self.child.take() else {
            return Ok(self.log());
        };
        let mut status = child.try_wait().ok().flatten();
        if status.is_none() {
            let pid = Pid::from_raw(child.id() as i32);
            // The child may have exited since try_wait; ESRCH is harmless then.
            let _ = kill(pid, Signal::SIGINT);
            let until = Instant::now() + STOP_TIMEOUT;
            while status.is_none() && Instant::now() < until {
                thread::sleep(Duration::from_millis(20));
                status = child.try_wait().map_err(|e| e.to_string())?;
            }
        }
        let killed = status.is_none();
        if killed {
            let _ = child.kill();
            status = child.wait().ok();
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let log = self.log();
        if killed {
            return Err(format!(
                "secgw did not stop within {STOP_TIMEOUT:?} of SIGINT (killed)\n{log}"
            ));
        }
        match status {
            Some(s) if s.success() => Ok(log),
            s => Err(format!("secgw exited with {s:?}\n{log}")),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Our own, uniquely named prefix: config, fbarrays, sockets.
        let _ = fs::remove_dir_all(&self.runtime);
    }
}

fn pump<R: Read + Send + 'static>(r: R, log: Arc<Mutex<String>>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut l) = log.lock() {
                l.push_str(&line);
                l.push('\n');
            }
        }
    })
}

/// Starts secgw, waits for its poll loop, samples its port counters after `warmup` and again
/// after `measure`, and stops it with SIGINT.
pub fn run(r: &SecgwRun) -> Result<SecgwResult, String> {
    let cfg_text = r.sa.config_file(r.next_hop_mac)?;
    fs::create_dir_all(r.workdir).map_err(|e| format!("{}: {e}", r.workdir.display()))?;
    let cfg = r.workdir.join("secgw.cfg");
    {
        use std::io::Write;
        let _ = fs::remove_file(&cfg);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&cfg)
            .map_err(|e| format!("{}: {e}", cfg.display()))?;
        f.write_all(cfg_text.as_bytes())
            .map_err(|e| format!("{}: {e}", cfg.display()))?;
    }
    if !r.binary.is_file() {
        return Err(format!("no secgw binary at {}", r.binary.display()));
    }
    let input = devarg_path(r.input_pcap)?;
    if !r.input_pcap.is_file() {
        return Err(format!("no input pcap at {input}"));
    }
    let output = match r.output {
        SecgwOutput::Null => "net_null0,no-rx=1".to_string(),
        SecgwOutput::Pcap(p) => format!("net_pcap1,tx_pcap={}", devarg_path(p)?),
    };
    let prefix = format!(
        "roamgate-secgw-{}-{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    );
    let runtime = runtime_dir(&prefix);
    let unprotected = match r.mode {
        SecgwMode::Encrypt => "0x2",
        SecgwMode::Decrypt => "0x1",
    };
    let lc = r.lcore;
    let mut cmd = Command::new(r.binary);
    cmd.args(["-l", &lc.to_string(), "--no-huge", "--no-pci"])
        .args(["-m", &EAL_MEM_MB.to_string(), "--file-prefix", &prefix])
        .arg("--vdev")
        .arg(format!(
            "net_pcap0,rx_pcap={input},infinite_rx={}",
            u8::from(r.repeat_input)
        ))
        .args(["--vdev", &output, "--vdev", "crypto_aesni_gcm0", "--"])
        .args(["-p", "0x3", "-P", "-u", unprotected])
        .args(["--config", &format!("(0,0,{lc}),(1,0,{lc})")])
        .arg("-f")
        .arg(&cfg);
    if r.librte_ipsec {
        cmd.arg("-l");
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", r.binary.display()))?;
    let log = Arc::new(Mutex::new(String::new()));
    let mut readers = Vec::new();
    if let Some(o) = child.stdout.take() {
        readers.push(pump(o, log.clone()));
    }
    if let Some(e) = child.stderr.take() {
        readers.push(pump(e, log.clone()));
    }
    let mut proc = Running {
        child: Some(child),
        log,
        readers,
        runtime: runtime.clone(),
    };

    // Started: the poll loop runs and telemetry listens.
    let sock = runtime.join("dpdk_telemetry.v2");
    let until = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if let Some(s) = proc.exited() {
            let _ = proc.stop();
            return Err(format!("secgw exited during startup ({s})\n{}", proc.log()));
        }
        if proc.log().contains(MAIN_LOOP) && sock.exists() {
            break;
        }
        if Instant::now() > until {
            let _ = proc.stop();
            return Err(format!(
                "secgw did not start within {STARTUP_TIMEOUT:?} (no {:?} in its log, or no {})\n{}",
                MAIN_LOOP,
                sock.display(),
                proc.log()
            ));
        }
        thread::sleep(Duration::from_millis(20));
    }
    let measured = (|| {
        let mut tel = Telemetry::connect(&sock)?;
        thread::sleep(r.warmup);
        let (t0, in0, out0) = tel.sample()?;
        thread::sleep(r.measure);
        let (t1, in1, out1) = tel.sample()?;
        let mut last = (in1, out1);
        if !r.repeat_input {
            // Sent once: wait until nothing moves any more (the input is used up and
            // everything that will leave has left).
            let until = Instant::now() + STOP_TIMEOUT;
            let mut still = 0;
            while still < 5 && Instant::now() < until {
                thread::sleep(Duration::from_millis(50));
                let (_, a, b) = tel.sample()?;
                if (a.ipackets, b.opackets) == (last.0.ipackets, last.1.opackets) {
                    still += 1;
                } else {
                    still = 0;
                }
                last = (a, b);
            }
        }
        Ok::<_, String>((t1 - t0, in0, out0, in1, out1, last))
    })();
    let stopped = proc.stop();
    let (dt, in0, out0, in1, out1, (inl, outl)) = match measured {
        Ok(m) => m,
        Err(e) => return Err(format!("{e}\n{}", proc.log())),
    };
    let log = stopped?;
    let secs = dt.as_secs_f64();
    let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
    let tx_counts_bytes = !(outl.obytes == 0 && outl.opackets > 0);
    Ok(SecgwResult {
        rx_pps: rate(in0.ipackets, in1.ipackets),
        tx_pps: rate(out0.opackets, out1.opackets),
        rx_bytes_per_s: rate(in0.ibytes, in1.ibytes),
        tx_bytes_per_s: tx_counts_bytes.then(|| rate(out0.obytes, out1.obytes)),
        secs,
        rx_packets: inl.ipackets,
        tx_packets: outl.opackets,
        errors: inl.errors() + outl.errors(),
        log,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa() -> SecgwSa {
        SecgwSa {
            spi: 0x5ec0_0001,
            key: [0xab; 16],
            salt: [1, 2, 3, 4],
            tunnel_src: "192.0.2.1".parse().unwrap(),
            tunnel_dst: "192.0.2.2".parse().unwrap(),
            protected_src: "10.1.0.0/24".parse().unwrap(),
            protected_dst: "10.2.0.0/24".parse().unwrap(),
        }
    }

    #[test]
    fn config_file_has_both_directions() {
        let c = sa().config_file([2, 0, 0, 0, 0xbb, 1]).unwrap();
        let key = "ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:01:02:03:04";
        for line in [
            "sp ipv4 out esp protect 1589641217 pri 1 src 10.1.0.0/24 dst 10.2.0.0/24 \
             sport 0:65535 dport 0:65535",
            "sp ipv4 in esp protect 1589641217 pri 1 src 10.1.0.0/24 dst 10.2.0.0/24 \
             sport 0:65535 dport 0:65535",
            &format!(
                "sa out 1589641217 aead_algo aes-128-gcm aead_key {key} mode ipv4-tunnel \
                 src 192.0.2.1 dst 192.0.2.2"
            ),
            &format!(
                "sa in 1589641217 aead_algo aes-128-gcm aead_key {key} mode ipv4-tunnel \
                 src 192.0.2.1 dst 192.0.2.2"
            ),
            "rt ipv4 dst 192.0.2.2/32 port 1",
            "rt ipv4 dst 10.2.0.0/24 port 1",
            "neigh port 1 02:00:00:00:bb:01",
        ] {
            assert!(c.lines().any(|l| l == line), "{line:?} missing");
        }
    }

    #[test]
    fn bad_sas_are_refused() {
        let mut s = sa();
        s.spi = 0x8000_0000;
        assert!(s.config_file([0; 6]).is_err());
        s.spi = 0;
        assert!(s.config_file([0; 6]).is_err());
        let mut s = sa();
        s.protected_dst = "fd00::/64".parse().unwrap();
        assert!(s.config_file([0; 6]).is_err());
    }

    #[test]
    fn debug_hides_the_key() {
        let d = format!("{:?}", sa());
        assert!(
            !d.contains("171") && !d.to_lowercase().contains("abab"),
            "{d}"
        );
    }

    #[test]
    fn roamgate_sides_mirror() {
        let s = sa();
        let out = s.sa_params(Direction::Outbound, SaId(0));
        let inb = s.sa_params(Direction::Inbound, SaId(0));
        assert_eq!(out.local, inb.remote);
        assert_eq!(out.local_ts, inb.remote_ts);
        assert_eq!(out.keys.key(), &[0xab; 16]);
        assert_eq!(inb.keys.salt, [1, 2, 3, 4]);
        assert!(out.encap.is_none() && !out.esn);
        assert_eq!(s.roamgate_plan(Direction::Outbound).rules.len(), 1);
        assert!(s.roamgate_plan(Direction::Inbound).rules.is_empty());
    }

    #[test]
    fn telemetry_stats_parse() {
        let r = r#"{"/ethdev/stats":{"ipackets":396576,"opackets":2,"ibytes":25380864,"obytes":0,"imissed":1,"ierrors":0,"oerrors":3,"rx_nombuf":0,"q_ipackets":[396576,0]}}"#;
        let s = PortStats::parse(r).unwrap();
        assert_eq!(s.ipackets, 396576);
        assert_eq!(s.ibytes, 25380864);
        assert_eq!(s.errors(), 4);
        assert!(PortStats::parse(r#"{"/ethdev/stats":null}"#).is_err());
        assert!(PortStats::parse("not json").is_err());
    }

    #[test]
    fn devarg_paths() {
        assert!(devarg_path(Path::new("/tmp/a.pcap")).is_ok());
        assert!(devarg_path(Path::new("/tmp/a,b.pcap")).is_err());
        assert!(devarg_path(Path::new("/tmp/a b.pcap")).is_err());
    }
}
