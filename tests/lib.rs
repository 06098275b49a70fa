//! Shared helpers for the end-to-end tests: a gateway built from a real config on in-memory
//! ports, driven turn by turn, and the external tools (tshark, scapy) the tests check against.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use control::config::{self, GatewayConfig, GatewayPlan, LabConfig};
use pipeline::agent::{self, WorkerLink};
use pipeline::crypto::{Backend, EspAlg, IntegAlg};
use pipeline::msg::{Direction, Update};
use pipeline::port::mem::{cable, MemFrame, MemPort};
use pipeline::port::Frame;
use pipeline::sad::Sad;
use pipeline::spd::Spd;
use pipeline::worker::Worker;

pub mod netns;
pub mod strongswan;

/// A local etcd cluster (members on loopback ports in a scratch directory, started by the
/// test and killed by pid when dropped): the cluster store's integration tests and, later,
/// the cluster namespace tests.
pub mod etcd {
    pub use control::cluster::store::local::{LocalEtcd, LocalSecurity};

    /// Starts `n` members under `target/e2e/<name>`, or `None` (a SKIP line) when Debian's
    /// etcd is not installed and `ROAMGATE_REQUIRE_TOOLS` is not set.
    pub fn cluster(name: &str, n: usize) -> Option<LocalEtcd> {
        if !super::have_tool("etcd", &["--version"]) || !super::have_tool("etcdctl", &["version"]) {
            return None;
        }
        let dir = super::scratch(name);
        Some(LocalEtcd::start(&dir, n, None).expect("local etcd cluster"))
    }
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// The roamgate binary the end-to-end tests run: `ROAMGATE_BIN` when set (`.ci/run` and the
/// README's test command build `target/release/roamgate` first and point it there: the
/// namespace tests measure loss and timing, which a debug build on a loaded machine distorts),
/// else `cargo_bin`, the test's own build (`env!("CARGO_BIN_EXE_roamgate")`).
pub fn roamgate_bin(cargo_bin: &str) -> String {
    match std::env::var("ROAMGATE_BIN") {
        Ok(p) if !p.is_empty() => {
            let path = if Path::new(&p).is_absolute() {
                PathBuf::from(&p)
            } else {
                root().join(&p)
            };
            assert!(
                path.is_file(),
                "ROAMGATE_BIN={p}: no such binary (cargo build --release -p roamgate first)"
            );
            path.to_str().expect("utf-8 path").to_owned()
        }
        _ => cargo_bin.to_owned(),
    }
}

/// The shipped lab configuration.
pub fn lab_config() -> (LabConfig, GatewayPlan, GatewayPlan) {
    let path = root().join("configs/lab.yaml");
    let cfg: LabConfig = config::load(&path).expect("configs/lab.yaml parses");
    let (a, b) = cfg.validate(&path).expect("configs/lab.yaml is valid");
    (cfg, a, b)
}

/// One gateway worker with its LAN and WAN cables, driven synchronously by the test.
pub struct TestGateway {
    pub worker: Worker<MemPort>,
    /// The host side of the LAN cable.
    pub lan: MemPort,
    /// The far end of the WAN cable (the "internet").
    pub wan: MemPort,
    pub agent: WorkerLink,
    backend: Backend,
    now: u64,
}

impl TestGateway {
    /// Builds the gateway and installs its SAs and policies through the agent's messages.
    pub fn new(gw: &GatewayConfig, plan: &GatewayPlan, backend: Backend) -> Self {
        let (lan, lan_gw) = cable("test-lan", "gw-lan", 4096);
        let (wan_gw, wan) = cable("gw-wan", "test-wan", 4096);
        let (agent, control) = agent::link(0, 1024, None);
        let worker = Worker::new(
            0,
            lan_gw,
            wan_gw,
            gw.lan.link(),
            gw.wan.link(),
            Sad::with_capacity(16, 1),
            Box::new(Spd::new(Vec::new()).expect("empty SPD")),
            control,
        );
        let mut t = TestGateway {
            worker,
            lan,
            wan,
            agent,
            backend,
            now: 0,
        };
        for (dir, params) in &plan.sas {
            let upd = Update::AddSa {
                dir: *dir,
                params: params.clone(),
            };
            t.command(&upd);
        }
        t.command(&Update::ReplaceSpd {
            rules: plan.rules.clone(),
        });
        t
    }

    /// Sends one update and drives the worker until it is acknowledged.
    pub fn command(&mut self, upd: &Update) -> u64 {
        let cmd = agent::prepare(self.backend, upd).expect("update prepares");
        let g = self.agent.send(cmd);
        for _ in 0..1000 {
            self.worker.poll(self.now);
            if self.agent.pump() >= g {
                return g;
            }
        }
        panic!(
            "generation {g} not acknowledged: {:?}",
            self.agent.rejections()
        );
    }

    /// Advances the clock and polls until nothing moves.
    pub fn run(&mut self, dt: Duration) {
        self.now += dt.as_nanos() as u64;
        for _ in 0..10_000 {
            if self.worker.poll(self.now) == 0 {
                break;
            }
        }
    }

    pub fn inject_wan(&mut self, frame: &[u8]) {
        let f = MemFrame::from_bytes(frame).expect("frame fits");
        assert!(self.wan.send(f).is_ok(), "wan cable full");
    }

    pub fn inject_lan(&mut self, frame: &[u8]) {
        let f = MemFrame::from_bytes(frame).expect("frame fits");
        assert!(self.lan.send(f).is_ok(), "lan cable full");
    }

    pub fn take_lan(&mut self) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| self.lan.recv())
            .map(|f| f.data().to_vec())
            .collect()
    }

    pub fn take_wan(&mut self) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| self.wan.recv())
            .map(|f| f.data().to_vec())
            .collect()
    }
}

/// Whether a required external tool is present. Under CI (`ROAMGATE_REQUIRE_TOOLS=1`) a
/// missing tool fails the test instead of skipping it.
pub fn have_tool(name: &str, probe: &[&str]) -> bool {
    let ok = Command::new(name)
        .args(probe)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        if std::env::var_os("ROAMGATE_REQUIRE_TOOLS").is_some() {
            panic!("{name} is required (ROAMGATE_REQUIRE_TOOLS is set); run vendor-scripts/install-deps.sh");
        }
        println!("SKIP: {name} not available (vendor-scripts/install-deps.sh installs it)");
    }
    ok
}

/// SA descriptions for tests/tools/esp_check.py (key material included: test keys only).
pub fn sas_json(plan: &GatewayPlan, dir: Direction) -> String {
    let items: Vec<String> = plan
        .sas
        .iter()
        .filter(|(d, _)| *d == dir)
        .map(|(_, p)| {
            let hex = |b: &[u8]| -> String { b.iter().map(|b| format!("{b:02x}")).collect() };
            // scapy's names; AES-GCM keys carry their salt, AES-CBC ones a separate HMAC key.
            let (key, algs) = match p.keys.alg {
                EspAlg::Aead(_) => (hex(&[p.keys.key(), &p.keys.salt[..]].concat()), String::new()),
                EspAlg::Cbc(_, integ) => (
                    hex(p.keys.key()),
                    format!(
                        r#", "crypt": "AES-CBC", "auth": "{}", "auth_key": "{}""#,
                        match integ {
                            IntegAlg::HmacSha1_96 => "HMAC-SHA1-96",
                            IntegAlg::HmacSha256_128 => "SHA2-256-128",
                            IntegAlg::HmacSha384_192 => "SHA2-384-192",
                            IntegAlg::HmacSha512_256 => "SHA2-512-256",
                        },
                        hex(p.keys.integ_key())
                    ),
                ),
            };
            // Outbound SAs run local -> remote; inbound ones were sent remote -> local.
            let (src, dst) = match dir {
                Direction::Outbound => (p.local, p.remote),
                Direction::Inbound => (p.remote, p.local),
            };
            format!(
                r#"{{"spi": {}, "key": "{key}", "esn": {}, "src": "{src}", "dst": "{dst}", "udp": {}{algs}}}"#,
                p.spi.0,
                p.esn,
                p.encap.is_some()
            )
        })
        .collect();
    format!("[{}]", items.join(", "))
}

/// The number in environment variable `name`, else `default` (the tests' knobs for long runs).
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The fields `fields` of every frame of `pcap` that matches the display filter `filter`
/// ("" for all), as tshark prints them (`-T fields`, one `Vec` per frame; an absent field is
/// ""; a field that occurs more than once keeps tshark's comma-joined list).
pub fn tshark_fields(pcap: &Path, filter: &str, fields: &[&str]) -> Vec<Vec<String>> {
    let mut cmd = Command::new("tshark");
    cmd.args(["-r", pcap.to_str().expect("utf-8 path"), "-T", "fields"])
        .args(["-E", "separator=/t", "-E", "occurrence=a"]);
    if !filter.is_empty() {
        cmd.args(["-Y", filter]);
    }
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = cmd.output().expect("tshark -r");
    assert!(
        out.status.success(),
        "tshark -r {}: {}",
        pcap.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect()
}

/// Now, in nanoseconds since the Unix epoch (the clock of tshark's `frame.time_epoch`).
pub fn unix_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// A scratch directory under the target dir, fresh per test.
pub fn scratch(name: &str) -> PathBuf {
    let d = root().join("target").join("e2e").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}
