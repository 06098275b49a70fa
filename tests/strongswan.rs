//! strongSwan as the reference peer of the interop tests: the namespace labs of
//! `vendor-scripts/netns-lab.sh` that host it, Debian's charon in a namespace
//! (`tests/tools/strongswan/charon-netns.sh`), roamgate's view sockets, and the traffic
//! tools (ping, iperf3) the tests measure with. Only processes started here are signalled.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::netns::in_ns;
use crate::root;

/// One of netns-lab.sh's labs (`rw-up` / `cl-up` ...), torn down with its `*-down` verb.
pub struct ScriptLab {
    pub prefix: String,
    down: &'static str,
}

impl ScriptLab {
    pub fn up(up: &str, down: &'static str, prefix: &str) -> ScriptLab {
        let out = Command::new("bash")
            .arg(root().join("vendor-scripts/netns-lab.sh"))
            .args([up, prefix])
            .output()
            .expect("netns-lab.sh");
        assert!(
            out.status.success(),
            "netns-lab.sh {up}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ScriptLab {
            prefix: prefix.into(),
            down,
        }
    }

    pub fn ns(&self, n: &str) -> String {
        format!("{}-{n}", self.prefix)
    }
}

impl Drop for ScriptLab {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(root().join("vendor-scripts/netns-lab.sh"))
            .args([self.down, &self.prefix])
            .status();
    }
}

/// strongSwan's charon in a namespace (killed, by its pid, on drop).
pub struct Charon {
    pid: String,
    ns: String,
    dir: PathBuf,
}

impl Charon {
    /// Starts charon with `dir/swanctl.conf` loaded.
    pub fn start(ns: &str, dir: &Path) -> Charon {
        Charon::start_env(ns, dir, &[])
    }

    /// Starts charon with `dir/swanctl.conf` loaded and `env` for charon-netns.sh (e.g.
    /// `FRAGMENT_SIZE`).
    pub fn start_env(ns: &str, dir: &Path, env: &[(&str, &str)]) -> Charon {
        let out = Command::new("bash")
            .arg(root().join("tests/tools/strongswan/charon-netns.sh"))
            .args(["start", ns, dir.to_str().unwrap()])
            .envs(env.iter().copied())
            .output()
            .expect("charon-netns.sh");
        let pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            out.status.success() && !pid.is_empty(),
            "charon did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Charon {
            pid,
            ns: ns.into(),
            dir: dir.to_owned(),
        }
    }

    /// Writes `conf` as the swanctl.conf of `dir` and starts charon with it.
    pub fn start_with(ns: &str, dir: &Path, conf: &str) -> Charon {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("swanctl.conf"), conf).unwrap();
        Charon::start(ns, dir)
    }

    pub fn swanctl(&self, args: &[&str]) -> String {
        let out = Command::new("bash")
            .arg(root().join("tests/tools/strongswan/charon-netns.sh"))
            .args(["swanctl", &self.ns, self.dir.to_str().unwrap()])
            .args(args)
            .output()
            .expect("swanctl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The line naming the established IKE SA (its SPIs), if any.
    pub fn ike_sa_line(&self) -> Option<String> {
        self.swanctl(&["--list-sas"])
            .lines()
            .find(|l| l.contains("ESTABLISHED"))
            .map(str::to_owned)
    }
}

impl Charon {
    /// Stops charon and waits (up to 10 s) until it is gone, so that the next charon in the
    /// same namespace can bind the IKE ports.
    pub fn stop(mut self) {
        let _ = Command::new("kill").arg(&self.pid).status();
        let proc = PathBuf::from(format!("/proc/{}", self.pid));
        let t = Instant::now();
        while proc.exists() && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.pid.clear();
    }
}

impl Drop for Charon {
    /// Ends charon and waits until it is gone (at most 5 s, then SIGKILL): a charon started
    /// next in the same namespace must find ports 500 and 4500 free.
    fn drop(&mut self) {
        if self.pid.is_empty() {
            return;
        }
        let _ = Command::new("kill").arg(&self.pid).status();
        let alive = |pid: &str| {
            Command::new("kill")
                .args(["-0", pid])
                .stderr(std::process::Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while alive(&self.pid) && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if alive(&self.pid) {
            let _ = Command::new("kill").args(["-9", &self.pid]).status();
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// The shipped strongSwan config `name` under tests/tools/strongswan.
pub fn swanctl_conf(name: &str) -> String {
    std::fs::read_to_string(root().join("tests/tools/strongswan").join(name)).unwrap()
}

/// The IKE view of a `roamgate run`/`client`: the control plane's socket next to the data
/// plane's.
pub fn ike_view(sock: &Path) -> serde_json::Value {
    let mut p = sock.as_os_str().to_owned();
    p.push(".ike");
    ask(Path::new(&p), "ike")
}

/// One request on a view socket, its JSON answer.
pub fn ask(sock: &Path, req: &str) -> serde_json::Value {
    let mut c = UnixStream::connect(sock).expect("view socket");
    c.write_all(format!("{req}\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(&c).read_line(&mut line).unwrap();
    serde_json::from_str(&line).expect("JSON")
}

/// The edge a cluster's crypto node designates for virtual IP `vip` (its host binding in
/// the `cluster` view of its socket), if one.
pub fn designated_edge(node_sock: &Path, vip: &str) -> Option<u64> {
    let state = ask(node_sock, "cluster");
    state["hosts"]
        .as_array()?
        .iter()
        .find(|h| h["vip"].as_str() == Some(vip))?["edges"]
        .as_array()?
        .first()?
        .as_u64()
}

pub fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Pings `dst` from namespace `ns` `n` times (0.2 s apart); the replies received.
pub fn pings(ns: &str, dst: &str, n: u32) -> u32 {
    let out = in_ns(
        ns,
        &["ping", "-c", &n.to_string(), "-i", "0.2", "-W", "2", dst],
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

/// An iperf3 UDP stream of 1200-byte datagrams (they fit the tunnel's path MTU, which the
/// sender may have learned) from `ns` to a server at `dst`: (datagrams, lost). A client that
/// hangs (its control connection cut by a broken tunnel) is stopped 30 s after its time and
/// fails the test instead of hanging it.
pub fn iperf_udp(ns: &str, dst: &str, rate: &str, secs: u32) -> (u64, u64) {
    let limit = (secs + 30).to_string();
    let out = in_ns(
        ns,
        &[
            "timeout",
            &limit,
            "iperf3",
            "-c",
            dst,
            "-u",
            "-b",
            rate,
            "-l",
            "1200",
            "-t",
            &secs.to_string(),
            "-J",
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("iperf3 UDP from {ns} to {dst}: no result ({})", out.status));
    if let Some(e) = v["error"].as_str() {
        panic!("iperf3 UDP from {ns} to {dst}: {e}");
    }
    let s = &v["end"]["sum"];
    (
        s["packets"].as_u64().unwrap_or(0),
        s["lost_packets"].as_u64().unwrap_or(u64::MAX),
    )
}

/// An iperf3 TCP run from `ns` to a server at `dst`: (bytes received, bits per second).
pub fn iperf_tcp(ns: &str, dst: &str, secs: u32) -> (u64, f64) {
    let limit = (secs + 30).to_string();
    let out = in_ns(
        ns,
        &[
            "timeout",
            &limit,
            "iperf3",
            "-c",
            dst,
            "-t",
            &secs.to_string(),
            "-J",
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 JSON");
    if let Some(e) = v["error"].as_str() {
        panic!("iperf3 TCP from {ns} to {dst}: {e}");
    }
    let r = &v["end"]["sum_received"];
    (
        r["bytes"].as_u64().unwrap_or(0),
        r["bits_per_second"].as_f64().unwrap_or(0.0),
    )
}

/// True when the test can run: root (else the SKIP line `root_or_skip` prints), strongSwan's
/// charon and swanctl, and each of `tools` (run with `--version`).
pub fn strongswan_or_skip(test: &str, tools: &[&str]) -> bool {
    crate::netns::root_or_skip(test)
        && crate::have_tool("swanctl", &["--help"])
        && crate::have_tool("/usr/lib/ipsec/charon", &["--version"])
        && tools.iter().all(|t| crate::have_tool(t, &["--version"]))
}

/// A capture (`Capture::finish`'s "layers" per frame) of a link that must carry nothing but
/// IKE and ESP, and plenty of ESP.
pub fn assert_only_ike_and_esp(protocols: &[String], link: &str) {
    let ok = |p: &String| p.ends_with(":isakmp") || p.ends_with(":esp");
    let other: Vec<&String> = protocols.iter().filter(|p| !ok(p)).collect();
    assert!(
        protocols.iter().filter(|p| p.ends_with(":esp")).count() > 1000,
        "ESP captured on {link}"
    );
    assert!(other.is_empty(), "non-IKE/ESP frames on {link}: {other:?}");
}

/// `swanctl --list-sas --raw` as JSON: one object per IKE SA, keyed by connection name, with
/// vici's own keys (`initiator-spi`, `local-host`, `encr-alg`, `child-sas` ...); lists (the
/// selectors, virtual IPs) as arrays. Values are single words in what the tests compare.
pub fn swanctl_sas(raw: &str) -> serde_json::Value {
    use serde_json::{Map, Value};
    let mut out = Map::new();
    for line in raw.lines() {
        let Some(body) = line.trim().strip_prefix("list-sa event") else {
            continue;
        };
        let spaced = body
            .replace('{', " { ")
            .replace('}', " } ")
            .replace('[', " [ ")
            .replace(']', " ] ");
        let mut toks = spaced.split_whitespace().peekable();
        // A stack of (name, section); the outermost is the event itself.
        let mut stack: Vec<(String, Map<String, Value>)> = vec![(String::new(), Map::new())];
        let mut pending: Option<String> = None;
        while let Some(t) = toks.next() {
            match t {
                "{" => stack.push((pending.take().unwrap_or_default(), Map::new())),
                "}" => {
                    let (name, sec) = stack.pop().expect("balanced braces");
                    match stack.last_mut() {
                        Some(parent) => {
                            parent.1.insert(name, Value::Object(sec));
                        }
                        None => panic!("unbalanced: {line}"),
                    }
                }
                t if t.ends_with('=') && toks.peek() == Some(&"[") => {
                    toks.next();
                    let mut items = Vec::new();
                    for i in toks.by_ref() {
                        if i == "]" {
                            break;
                        }
                        items.push(Value::String(i.to_string()));
                    }
                    let key = t.trim_end_matches('=').to_string();
                    stack.last_mut().unwrap().1.insert(key, Value::Array(items));
                }
                t => match t.split_once('=') {
                    Some((k, v)) => {
                        stack
                            .last_mut()
                            .unwrap()
                            .1
                            .insert(k.to_string(), Value::String(v.to_string()));
                    }
                    None => pending = Some(t.to_string()),
                },
            }
        }
        // The event's own braces hold the IKE SAs (a section with no name).
        if let Some((_, mut top)) = stack.pop() {
            match top.remove("") {
                Some(Value::Object(inner)) => out.extend(inner),
                _ => out.extend(top),
            }
        }
    }
    Value::Object(out)
}
