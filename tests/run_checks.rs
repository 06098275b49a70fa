//! `roamgate run` through the real binary, without root: a file that cannot work is refused
//! before any child process starts, with an exit status of 1 and the key named.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use roamgate_tests::{root, scratch};

/// The interop gateway's file with `from` replaced by `to`.
fn variant(dir: &Path, name: &str, from: &str, to: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(root().join("configs/interop-gw.yaml")).unwrap();
    assert!(text.contains(from), "{from} is in the example");
    let p = dir.join(name);
    std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
    p
}

/// Runs `roamgate run --config FILE`; returns (exit code, stderr, seconds it took). A run that
/// is still going after `limit` is killed (it is our child) and reported as None.
fn run_for(config: &Path, limit: Duration) -> (Option<i32>, String, f64) {
    let t = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_roamgate"))
        .arg("run")
        .arg("--config")
        .arg(config)
        .arg("--shm")
        .arg(config.with_extension("ctl"))
        .arg("--socket")
        .arg(config.with_extension("sock"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("roamgate starts");
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    (
        code,
        String::from_utf8_lossy(&out.stderr).into_owned(),
        t.elapsed().as_secs_f64(),
    )
}

#[test]
fn run_refuses_a_bad_ike_section_before_starting_anything() {
    let dir = scratch("run_checks");
    for (name, from, to, key) in [
        (
            "bad-proposal.yaml",
            "ike_proposals: [aes128gcm16-prfsha256-x25519,",
            "ike_proposals: [aes128gcm16-prfsha256-x448,",
            "ike.connections[0].ike_proposals[0]",
        ),
        (
            "bad-psk.yaml",
            "psk: \"lab-psk-not-secret\"",
            "psk: \"Zq9x\"",
            "ike.connections[0].psk",
        ),
    ] {
        let cfg = variant(&dir, name, from, to);
        let (code, stderr, secs) = run_for(&cfg, Duration::from_secs(10));
        assert_eq!(code, Some(1), "{name}: run exits 1 at once:\n{stderr}");
        assert!(secs < 5.0, "{name}: promptly ({secs:.1} s)");
        assert!(
            stderr.contains(&cfg.display().to_string()) && stderr.contains(key),
            "{name}: the error names the file and {key}:\n{stderr}"
        );
        assert!(
            !stderr.contains("run: started"),
            "{name}: no child was started:\n{stderr}"
        );
        assert!(!stderr.contains("Zq9x"), "no PSK in the error:\n{stderr}");
    }
}

#[test]
fn run_stops_when_a_child_cannot_start_instead_of_restarting_it_for_ever() {
    let dir = scratch("run_checks_startup");
    let text = std::fs::read_to_string(root().join("configs/interop-gw.yaml")).unwrap();
    let text = text
        .replace("name: gw\n", "name: startup-check\n")
        .replace("device: lan,", "device: rgnodev0,")
        .replace("device: wan,", "device: rgnodev1,");
    let cfg = dir.join("no-devices.yaml");
    std::fs::write(&cfg, text).unwrap();
    let (code, stderr, secs) = run_for(&cfg, Duration::from_secs(20));
    assert_eq!(code, Some(1), "run gives up with an error:\n{stderr}");
    assert!(secs < 10.0, "promptly ({secs:.1} s):\n{stderr}");
    assert!(
        stderr.contains("roamgate dataplane failed at start-up"),
        "it says which child and why:\n{stderr}"
    );
    assert_eq!(
        stderr.matches("run: started dataplane").count(),
        1,
        "never restarted:\n{stderr}"
    );
    // The control plane it had started is stopped and leaves nothing behind.
    assert!(stderr.contains("run: started control"), "{stderr}");
    for left in ["ctl", "sock", "sock.ike"] {
        let p = cfg.with_extension(left);
        assert!(!p.exists(), "{} was left behind:\n{stderr}", p.display());
    }
}

/// A stats file that cannot be written stops `dataplane`, `run` and `client` at start-up with
/// the flag named, before any port is opened or child started (it used to stop a gateway
/// that was already forwarding, at its first write).
#[test]
fn an_unwritable_stats_file_is_refused_at_start_up() {
    let dir = scratch("run_checks_stats_file");
    let cfg = dir.join("gw.yaml");
    std::fs::copy(root().join("configs/interop-gw.yaml"), &cfg).unwrap();
    let bad = dir.join("no-such-dir").join("stats.json");
    for sub in ["dataplane", "run"] {
        let out = Command::new(env!("CARGO_BIN_EXE_roamgate"))
            .arg(sub)
            .arg("--config")
            .arg(&cfg)
            .arg("--stats-file")
            .arg(&bad)
            .arg("--socket")
            .arg(cfg.with_extension("sock"))
            .arg("--shm")
            .arg(cfg.with_extension("ctl"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .expect("roamgate starts");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{sub}:\n{stderr}");
        assert!(
            stderr.contains("--stats-file") && stderr.contains("no-such-dir"),
            "{sub} names the flag and the path:\n{stderr}"
        );
        assert!(
            !stderr.contains("started"),
            "{sub} started nothing:\n{stderr}"
        );
    }
}

/// A group member (`group:`) and an HA node (`ha:`) run their control half in the control
/// process: `run --single-process` refuses either file at start-up, the section named,
/// instead of running a gateway that silently leaves the group or the pair out.
#[test]
fn single_process_refuses_a_group_member_and_an_ha_node() {
    let dir = scratch("run_checks_single_process");
    for (example, key) in [("group-member.yaml", "group:"), ("ha-a.yaml", "ha:")] {
        let cfg = dir.join(example);
        std::fs::copy(root().join("configs").join(example), &cfg).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_roamgate"))
            .args(["run", "--single-process", "--config"])
            .arg(&cfg)
            .arg("--socket")
            .arg(cfg.with_extension("sock"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .expect("roamgate starts");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{example}:\n{stderr}");
        assert!(
            stderr.contains(&format!("{}: {key}", cfg.display()))
                && stderr.contains("--single-process"),
            "{example}: the file, the section and the flag named:\n{stderr}"
        );
        assert!(
            !stderr.contains("worker(s) on"),
            "{example}: no port opened:\n{stderr}"
        );
    }
}

/// `roamgate check --config FILE`: the shipped certificate gateway with a PKI made by
/// make-test-ca.sh is OK (exit 0, its connections counted); the same with a broken ESP
/// proposal or a missing key file is refused with the file and key named (exit 1).
#[test]
fn check_validates_a_file_with_its_credentials() {
    if !roamgate_tests::have_tool("openssl", &["version"]) {
        println!("SKIP check_validates_a_file_with_its_credentials: needs openssl");
        return;
    }
    let dir = scratch("check_cmd");
    let pki = dir.join("pki");
    let st = Command::new("bash")
        .arg(root().join("vendor-scripts/make-test-ca.sh"))
        .arg(&pki)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "make-test-ca.sh");
    let text = std::fs::read_to_string(root().join("configs/rw-cert-gw.yaml"))
        .unwrap()
        .replace("/etc/roamgate/", &format!("{}/", pki.display()));
    let check = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_roamgate"))
            .args(["check", "--config"])
            .arg(&p)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = check("ok.yaml", &text);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("OK: gateway gw, 1 IKE connection(s)"), "{out}");
    // The file without `--config` is checked the same; both at once are refused.
    let plain = Command::new(env!("CARGO_BIN_EXE_roamgate"))
        .arg("check")
        .arg(dir.join("ok.yaml"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&plain.stdout);
    assert_eq!(plain.status.code(), Some(0), "{said}");
    assert!(
        said.contains("OK: gateway gw, 1 IKE connection(s)"),
        "{said}"
    );
    let both = Command::new(env!("CARGO_BIN_EXE_roamgate"))
        .args(["check", "--config"])
        .arg(dir.join("ok.yaml"))
        .arg(dir.join("ok.yaml"))
        .output()
        .unwrap();
    assert_eq!(both.status.code(), Some(2));
    let (code, _, err) = check("md5.yaml", &text.replace("aes128-sha256]", "aes128-md5]"));
    assert_eq!(code, Some(1));
    assert!(
        err.contains("md5.yaml: ike.connections[0].esp_proposals[4]") && err.contains("'md5'"),
        "{err}"
    );
    std::fs::remove_file(pki.join("gw.key")).unwrap();
    let (code, _, err) = check("nokey.yaml", &text);
    assert_eq!(code, Some(1));
    assert!(err.contains("nokey.yaml: ike.connections[0].key"), "{err}");
}

/// `roamgate check` tells the other kinds of file apart by their sections and checks each as
/// its command would: the lab's, a crypto node's (with a broken key named), a key server's.
#[test]
fn check_reads_the_lab_the_crypto_node_and_the_key_server_files() {
    let dir = scratch("check_kinds");
    let check = |p: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_roamgate"))
            .args(["check", "--config"])
            .arg(p)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    for (example, says) in [
        (
            "lab.yaml",
            "OK: lab (`roamgate lab --config`), sites site-a and site-b",
        ),
        (
            "cluster/crypto-node.yaml",
            "OK: crypto node 1 (`roamgate crypto-node`)",
        ),
        ("gcks.yaml", "OK: key server gcks"),
    ] {
        let (code, out) = check(&root().join("configs").join(example));
        assert_eq!(code, Some(0), "{example}: {out}");
        assert!(out.contains(says), "{example}: {out}");
    }
    let text = std::fs::read_to_string(root().join("configs/cluster/crypto-node.yaml")).unwrap();
    assert!(text.contains("listen: 169.254.80.1:7600"), "{text}");
    let bad = dir.join("node.yaml");
    std::fs::write(&bad, text.replacen(":7600", ":76000", 1)).unwrap();
    let (code, out) = check(&bad);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("{}:", bad.display())) && out.contains("cluster.listen"),
        "{out}"
    );
}
