//! `roamgate run`'s life through the real binary, on AF_XDP over veths in a namespace of its
//! own (root; a SKIP line otherwise): kill -9 of the supervisor takes its children with it and
//! a new run comes up on the same devices; SIGTERM while the control plane is stalled still
//! leaves no shared-memory channel and no view socket behind.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use roamgate_tests::netns::{root_or_skip, GatewayNamespace};
use roamgate_tests::{root, scratch};

/// The binary under test: `ROAMGATE_BIN` (the release build `.ci/run` makes) or this build's.
static BIN: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| roamgate_tests::roamgate_bin(env!("CARGO_BIN_EXE_roamgate")));

const NS: &str = "rglife-gw";
const NAME: &str = "lifecycle";

/// A `roamgate run` in the namespace with its stderr collected.
struct Run {
    child: Option<Child>,
    stderr: Arc<Mutex<String>>,
}

impl Run {
    fn start(config: &Path, socket: &Path) -> Run {
        Self::start_with(config, &["--socket".as_ref(), socket.as_os_str()])
    }

    fn start_with(config: &Path, extra: &[&std::ffi::OsStr]) -> Run {
        let mut child = Command::new("ip")
            .args(["netns", "exec", NS, BIN.as_str(), "run"])
            .arg("--config")
            .arg(config)
            .args(extra)
            .args(["--status-secs", "0", "--idle-sleep-us", "200"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("roamgate run starts");
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Run {
            child: Some(child),
            stderr,
        }
    }

    fn text(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The pids of the children it started last.
    fn children(&self) -> (Option<u32>, Option<u32>) {
        let text = self.text();
        let pid = |name: &str| {
            text.lines()
                .filter_map(|l| Some(l.split_once(&format!("run: started {name} (pid "))?.1))
                .filter_map(|r| r.trim_end_matches(')').parse().ok())
                .next_back()
        };
        (pid("control"), pid("dataplane"))
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id();
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// Waits for the exit; None if it did not exit within `limit`.
    fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let t = Instant::now();
        while t.elapsed() < limit {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Whether a process is gone (no such pid, or a zombie waiting for its reaper).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// Both children serve their views: the data plane at `socket`, the control plane at
/// `socket.ike`.
fn up(run: &Run, socket: &Path) -> bool {
    let ike = ike_socket(socket);
    wait_until(Duration::from_secs(20), || {
        socket.exists() && ike.exists() && {
            let (c, d) = run.children();
            c.is_some() && d.is_some()
        }
    })
}

fn ike_socket(socket: &Path) -> PathBuf {
    let mut p = socket.as_os_str().to_owned();
    p.push(".ike");
    PathBuf::from(p)
}

/// This gateway's run directories in /dev/shm.
fn run_dirs() -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(&format!("roamgate-{NAME}.")))
        .collect()
}

#[test]
fn run_children_die_with_it_and_nothing_is_left_behind() {
    if !root_or_skip("run_lifecycle") {
        return;
    }
    let dir = scratch("run_lifecycle");
    let text = std::fs::read_to_string(root().join("configs/interop-gw.yaml")).unwrap();
    let config = dir.join("gw.yaml");
    std::fs::write(
        &config,
        text.replace("name: gw\n", &format!("name: {NAME}\n")),
    )
    .unwrap();
    let socket = dir.join("view.sock");
    let _ns = GatewayNamespace::up(NS);

    // kill -9 of the supervisor: its children go with it.
    let mut first = Run::start(&config, &socket);
    assert!(up(&first, &socket), "run came up:\n{}", first.text());
    let (Some(control), Some(dataplane)) = first.children() else {
        unreachable!()
    };
    first.signal("KILL");
    assert!(first.wait(Duration::from_secs(2)).is_some());
    let t = Instant::now();
    let both_gone = wait_until(Duration::from_secs(2), || gone(control) && gone(dataplane));
    assert!(
        both_gone,
        "control {control} and dataplane {dataplane} outlived their supervisor:\n{}",
        first.text()
    );
    println!("children gone {:?} after the supervisor", t.elapsed());

    // A new run on the same devices comes up: the XDP programs went with the old data plane,
    // the old run's directory is found and removed.
    let mut second = Run::start(&config, &socket);
    assert!(
        up(&second, &socket),
        "a second run came up:\n{}",
        second.text()
    );
    assert!(
        second.text().contains("removed what an earlier run left"),
        "{}",
        second.text()
    );
    assert_eq!(run_dirs().len(), 1, "{:?}", run_dirs());

    // SIGTERM while the control plane is stalled (as under a flood): it is killed after its
    // grace period, and the run still leaves nothing behind.
    let (Some(control), Some(_)) = second.children() else {
        unreachable!()
    };
    let st = Command::new("kill")
        .args(["-STOP", &control.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    second.signal("TERM");
    let status = second.wait(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "run exits 0 on SIGTERM ({status:?}):\n{}",
        second.text()
    );
    assert!(gone(control));
    assert_eq!(
        run_dirs(),
        Vec::<String>::new(),
        "the channel's directory is gone"
    );
    assert!(!socket.exists(), "the data plane's view socket is gone");
    assert!(
        !ike_socket(&socket).exists(),
        "the control plane's view socket is gone:\n{}",
        second.text()
    );

    // Without --socket, the views are served at the gateway's default socket and `roamgate
    // status|stats|sa` find it without being told where.
    let default = PathBuf::from(format!("/run/roamgate/{NAME}.sock"));
    let mut third = Run::start_with(&config, &[]);
    assert!(up(&third, &default), "run came up:\n{}", third.text());
    let view = |args: &[&str]| {
        let out = Command::new(BIN.as_str()).args(args).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    // Another gateway's default socket may be there too (a test running beside this one):
    // name ours.
    for sub in ["status", "stats", "sa"] {
        let (ok, text) = view(&[sub, "--gateway", NAME]);
        assert!(ok && text.contains(NAME), "roamgate {sub}:\n{text}");
    }
    let (ok, text) = view(&["status", "--gateway", "../etc/x"]);
    assert!(!ok && text.contains("not a path"), "{text}");
    let (ok, text) = view(&["status", "--json", "--gateway", NAME]);
    assert!(
        ok && text.contains("\"ike_sas\""),
        "the control plane answers too:\n{text}"
    );
    third.signal("TERM");
    let status = third.wait(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "{}", third.text());
    assert!(!default.exists(), "the default socket is gone");
    assert!(!ike_socket(&default).exists(), "and the control plane's");
}
