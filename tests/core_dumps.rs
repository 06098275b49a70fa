//! The processes that hold keys stay out of core dumps (issue 14 item 13): `control`,
//! `dataplane`, `run` (with its two children) and `client`, started through the real binary,
//! are not dumpable, and are with `--allow-core-dumps`.
//!
//! What the test reads is the kernel's own answer: the entries of `/proc/<pid>` of a process
//! that is not dumpable belong to root, those of a dumpable one to the process's user. So the
//! processes run as an unprivileged user: when the test is root, as `nobody` (through
//! `setpriv`, with the capabilities AF_XDP needs as ambient capabilities for the data plane);
//! otherwise as the test's own user, which only `control` can do (the others need root and
//! print a SKIP line).

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use roamgate_tests::netns::{root_or_skip, GatewayNamespace};
use roamgate_tests::{root, scratch};

const NS: &str = "rgcore-gw";
const NOBODY: u32 = 65534;
/// What AF_XDP needs: XDP programs and maps, raw sockets, locked UMEM pages.
const CAPS: &str = "+net_admin,+net_raw,+bpf,+sys_admin,+ipc_lock,+perfmon";

fn euid() -> u32 {
    std::fs::metadata("/proc/self").unwrap().uid()
}

/// The user the processes run as.
fn user() -> u32 {
    if euid() == 0 {
        NOBODY
    } else {
        euid()
    }
}

/// A roamgate subcommand started as `user()`, in the namespace if `netns`, with its output
/// collected.
struct Proc {
    child: Option<Child>,
    out: Arc<Mutex<String>>,
}

impl Proc {
    fn start(netns: bool, args: &[String]) -> Proc {
        let bin = env!("CARGO_BIN_EXE_roamgate");
        let mut cmd = if netns {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", NS]);
            c
        } else if euid() == 0 {
            Command::new("setpriv")
        } else {
            Command::new(bin)
        };
        if netns {
            cmd.arg("setpriv");
        }
        if euid() == 0 {
            cmd.args([
                "--reuid",
                &NOBODY.to_string(),
                "--regid",
                &NOBODY.to_string(),
                "--clear-groups",
            ]);
            if netns {
                cmd.args([
                    &format!("--inh-caps={CAPS}"),
                    &format!("--ambient-caps={CAPS}"),
                ]);
            }
            cmd.arg(bin);
        }
        let mut child = cmd
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("roamgate starts");
        let out = Arc::new(Mutex::new(String::new()));
        let pipes: [Box<dyn Read + Send>; 2] = [
            Box::new(child.stdout.take().unwrap()),
            Box::new(child.stderr.take().unwrap()),
        ];
        for pipe in pipes {
            let sink = out.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut s = sink.lock().unwrap();
                    s.push_str(&line);
                    s.push('\n');
                }
            });
        }
        Proc {
            child: Some(child),
            out,
        }
    }

    fn text(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Waits until the output holds every one of `marks`.
    fn wait_for(&self, marks: &[&str]) {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            let text = self.text();
            if marks.iter().all(|m| text.contains(m)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("waited for {marks:?}:\n{}", self.text());
    }

    /// The pid a supervisor reported for its child `name`.
    fn child_pid(&self, name: &str) -> u32 {
        let text = self.text();
        text.lines()
            .filter_map(|l| Some(l.split_once(&format!("run: started {name} (pid "))?.1))
            .filter_map(|r| r.trim_end_matches(')').parse().ok())
            .next_back()
            .unwrap_or_else(|| panic!("no pid of {name}:\n{text}"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        // SIGTERM first: a supervisor stops its children and cleans up.
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(15) {
            if c.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Who owns `/proc/<pid>`: root for a process that is not dumpable.
fn proc_owner(pid: u32) -> u32 {
    std::fs::metadata(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"))
        .uid()
}

fn expected_owner(allow: bool) -> u32 {
    if allow {
        user()
    } else {
        0
    }
}

/// A scratch directory the processes' user can write, with `config` copied in as `gw.yaml`
/// (its gateway renamed so that its run directory is this test's).
fn workdir(test: &str, config: &str, gateway: &str) -> PathBuf {
    let dir = scratch(test);
    let text = std::fs::read_to_string(root().join("configs").join(config)).unwrap();
    let text = text.replacen(
        &format!("  name: {gateway}\n"),
        &format!("  name: {test}\n"),
        1,
    );
    assert!(text.contains(&format!("name: {test}\n")), "{config}");
    std::fs::write(dir.join("gw.yaml"), text).unwrap();
    if euid() == 0 {
        for p in [dir.clone(), dir.join("gw.yaml")] {
            let st = Command::new("chown")
                .arg(format!("{NOBODY}:{NOBODY}"))
                .arg(&p)
                .status()
                .unwrap();
            assert!(st.success());
        }
    }
    dir
}

fn arg(p: &Path) -> String {
    p.display().to_string()
}

fn with_flag(mut args: Vec<String>, allow: bool) -> Vec<String> {
    if allow {
        args.push("--allow-core-dumps".into());
    }
    args
}

#[test]
fn control_is_not_dumpable_unless_allowed() {
    for allow in [false, true] {
        let dir = workdir("core_control", "netns-a.yaml", "gw-a");
        let args = vec![
            "control".into(),
            "--config".into(),
            arg(&dir.join("gw.yaml")),
            "--shm".into(),
            arg(&dir.join("ctl")),
            "--seq-state".into(),
            arg(&dir.join("seq-state")),
        ];
        let p = Proc::start(false, &with_flag(args, allow));
        p.wait_for(&["roamgate control core_control:"]);
        assert_eq!(
            proc_owner(p.pid()),
            expected_owner(allow),
            "allow={allow}:\n{}",
            p.text()
        );
    }
}

#[test]
fn dataplane_run_and_client_with_their_children_are_not_dumpable_unless_allowed() {
    if !root_or_skip("core_dumps") {
        return;
    }
    let _ns = GatewayNamespace::up(NS);
    for allow in [false, true] {
        // The data plane alone, with the static SAs of its file.
        let dir = workdir("core_dataplane", "netns-a.yaml", "gw-a");
        let args = vec![
            "dataplane".into(),
            "--config".into(),
            arg(&dir.join("gw.yaml")),
            "--status-secs".into(),
            "0".into(),
            "--idle-sleep-us".into(),
            "200".into(),
        ];
        let p = Proc::start(true, &with_flag(args, allow));
        p.wait_for(&["worker(s) on AF_XDP"]);
        assert_eq!(
            proc_owner(p.pid()),
            expected_owner(allow),
            "dataplane allow={allow}:\n{}",
            p.text()
        );
        drop(p);

        // The supervisors and both of their children (the flag is passed on).
        for (sub, config, gateway) in [
            ("run", "interop-gw.yaml", "gw"),
            ("client", "client.yaml", "home"),
        ] {
            let test = format!("core_{sub}");
            let dir = workdir(&test, config, gateway);
            let args = vec![
                sub.into(),
                "--config".into(),
                arg(&dir.join("gw.yaml")),
                "--status-secs".into(),
                "0".into(),
                "--idle-sleep-us".into(),
                "200".into(),
            ];
            let p = Proc::start(true, &with_flag(args, allow));
            p.wait_for(&["run: started control", "run: started dataplane", "attached"]);
            for (name, pid) in [
                (sub, p.pid()),
                ("control", p.child_pid("control")),
                ("dataplane", p.child_pid("dataplane")),
            ] {
                assert_eq!(
                    proc_owner(pid),
                    expected_owner(allow),
                    "{sub}: {name} allow={allow}:\n{}",
                    p.text()
                );
            }
        }
    }
}
