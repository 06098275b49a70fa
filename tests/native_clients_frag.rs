//! IKE fragmentation (RFC 7383) against Debian's strongSwan 5.9.8 over a path that carries
//! no IP fragment: a ~4 KB certificate chain (vendor-scripts/make-test-ca.sh with
//! `RSA_BITS=4096`: the gateway's RSA 4096 certificate and its RSA 4096 intermediate) in
//! IKE_AUTH, both directions.
//!
//! The path: strongSwan's veth has MTU 576, and an HTB filter on its egress sends every IP
//! fragment but the last (the MF flag) to a `pfifo limit 0`, which drops it; frames above
//! 576 bytes towards it are dropped by the veth itself. So only IKE fragments of at most 576
//! bytes cross (charon's `fragment_size = 576`, roamgate's default IPv4 fragment size).
//!
//! - `strongswan_client_to_roamgate_gateway_over_mtu_576` (netns-lab.sh rw-up): first a
//!   control, strongSwan with `fragmentation = no`: IKE_AUTH goes in IP fragments, which the
//!   path drops, and the tunnel does not come up; then `fragmentation = yes`: up, ping, and
//!   roamgate's counters show the fragments both ways. `FRAG_OFF=1` turns roamgate's
//!   fragmentation off instead (`ike.fragmentation: false`): the tunnel must not come up, and
//!   the test fails, which shows that it depends on roamgate's fragmentation.
//! - `roamgate_client_to_strongswan_gateway_over_mtu_576` (netns-lab.sh cl-up): roamgate as the
//!   client with the RSA 4096 client certificate, strongSwan as the gateway sending its chain.
//!
//! Each prints `native-clients case=frag-mtu576[-roamgate-client] up=yes ping=5/5 lost=0
//! fragments=sent:<n>,received:<n>` (roamgate's counters). About 40 s in all (the RSA 4096
//! keys and the control's timeout). Needs root (prints a SKIP line otherwise), strongSwan,
//! openssl, tc.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use roamgate_tests::netns::DataplaneProcess;
use roamgate_tests::strongswan::{ike_view, pings, strongswan_or_skip, Charon, ScriptLab};
use roamgate_tests::{root, scratch};

/// The binary under test: `ROAMGATE_BIN` (the release build `.ci/run` makes) or this build's.
static BIN: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| roamgate_tests::roamgate_bin(env!("CARGO_BIN_EXE_roamgate")));

fn make_pki(dir: &Path) -> PathBuf {
    let pki = dir.join("pki");
    let out = Command::new("bash")
        .arg(root().join("vendor-scripts/make-test-ca.sh"))
        .arg(&pki)
        .env("RSA_BITS", "4096")
        .output()
        .expect("make-test-ca.sh");
    assert!(
        out.status.success(),
        "make-test-ca.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    pki
}

fn run(ns: &str, args: &[&str]) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .expect("ip netns exec");
    assert!(
        out.status.success(),
        "{ns}: {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// MTU 576 on `dev` of `ns`, and its egress drops every IP fragment but the last.
fn small_path(ns: &str, dev: &str) {
    run(ns, &["ip", "link", "set", dev, "mtu", "576"]);
    let tc = |a: &str| {
        let v: Vec<&str> = a.split_whitespace().collect();
        let mut args = vec!["tc"];
        args.extend(v);
        run(ns, &args);
    };
    tc(&format!(
        "qdisc add dev {dev} root handle 1: htb default 10"
    ));
    tc(&format!(
        "class add dev {dev} parent 1: classid 1:10 htb rate 1gbit quantum 1514"
    ));
    tc(&format!(
        "class add dev {dev} parent 1: classid 1:20 htb rate 1gbit quantum 1514"
    ));
    tc(&format!(
        "qdisc add dev {dev} parent 1:20 handle 20: pfifo limit 0"
    ));
    // IPv4 flags and fragment offset at byte 6: MF set.
    tc(&format!(
        "filter add dev {dev} parent 1: protocol ip u32 match u16 0x2000 0x2000 at 6 flowid 1:20"
    ));
}

/// IP fragments the filter of `dev` in `ns` dropped so far.
fn fragments_dropped(ns: &str, dev: &str) -> u64 {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "tc", "-s", "qdisc", "show", "dev", dev])
        .output()
        .expect("tc");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    while let Some(l) = lines.next() {
        if l.starts_with("qdisc pfifo 20:") {
            return lines
                .next()
                .and_then(|s| s.split("(dropped ").nth(1))
                .and_then(|s| s.split(',').next())
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0);
        }
    }
    0
}

fn counter(view: &serde_json::Value, name: &str) -> u64 {
    view["ike_messages"][name].as_u64().unwrap_or(0)
}

fn swanctl_creds(pki: &Path, dir: &Path, files: &[(&str, &str)]) {
    for (folder, f) in files {
        std::fs::create_dir_all(dir.join(folder)).unwrap();
        std::fs::copy(pki.join(f), dir.join(folder).join(f)).unwrap();
    }
}

#[test]
fn strongswan_client_to_roamgate_gateway_over_mtu_576() {
    if !strongswan_or_skip("native_clients_frag", &[])
        || !roamgate_tests::have_tool("openssl", &["version"])
        || !roamgate_tests::have_tool("tc", &["-V"])
    {
        return;
    }
    let roamgate_off = std::env::var("FRAG_OFF").is_ok_and(|v| v == "1");
    let dir = scratch("native_clients_frag");
    let pki = make_pki(&dir);
    let p = |f: &str| pki.join(f).to_string_lossy().into_owned();
    let lab = ScriptLab::up(
        "rw-up",
        "rw-down",
        &format!("rgf{}", std::process::id() % 100_000),
    );
    small_path(&lab.ns("rw"), "eth0");
    let cfg = std::fs::read_to_string(root().join("configs/interop-gw.yaml")).unwrap();
    let psk = "      remote_id: rw.roamgate.test\n      psk: \"lab-psk-not-secret\"\n";
    assert!(cfg.contains(psk), "the interop config changed");
    let mut cfg = cfg.replace(
        psk,
        &format!(
            "      auth: pubkey\n      cert: {}\n      key: {}\n      cacerts: [{}]\n",
            p("gw-chain.pem"),
            p("gw.key"),
            p("ca.pem"),
        ),
    );
    cfg = cfg
        .replace("ike:\n", "ike:\n  fragmentation: FRAG\n")
        .replace("FRAG", if roamgate_off { "false" } else { "true" });
    let chain = std::fs::metadata(pki.join("gw-chain.pem")).unwrap().len();
    let cfg_path = dir.join("gw.yaml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let gw = DataplaneProcess::start_sub(
        Path::new(BIN.as_str()),
        "run",
        &lab.ns("gw"),
        &cfg_path,
        &dir,
        "gw",
        &["--shm", dir.join("control.shm").to_str().unwrap()],
    );
    std::thread::sleep(Duration::from_millis(500));
    let conf = |frag: &str| {
        format!(
            "connections {{
  gw {{
    remote_addrs = 192.0.2.1
    vips = 0.0.0.0
    version = 2
    fragmentation = {frag}
    proposals = aes128gcm16-prfsha256-x25519
    local {{ auth = pubkey
      certs = rw-rsa.pem
      id = rw-rsa.roamgate.test }}
    remote {{ auth = pubkey
      cacerts = ca.pem
      id = gw.roamgate.test }}
    children {{
      net {{ remote_ts = 10.9.0.0/24
        esp_proposals = aes128gcm16
        start_action = none }}
    }}
  }}
}}
"
        )
    };
    let creds = [
        ("x509", "rw-rsa.pem"),
        ("private", "rw-rsa.key"),
        ("x509ca", "ca.pem"),
    ];
    let env = [("FRAGMENT_SIZE", "576")];

    // The control: no IKE fragmentation, so IKE_AUTH needs IP fragments, which the path
    // drops.
    let cdir = dir.join("nofrag");
    swanctl_creds(&pki, &cdir, &creds);
    std::fs::write(cdir.join("swanctl.conf"), conf("no")).unwrap();
    let charon = Charon::start_env(&lab.ns("rw"), &cdir, &env);
    let out = charon.swanctl(&["--initiate", "--child", "net", "--timeout", "10"]);
    let control_up = out.contains("initiate completed successfully");
    let dropped = fragments_dropped(&lab.ns("rw"), "eth0");
    println!(
        "native-clients case=frag-mtu576-control fragmentation=no up={} ip_fragments_dropped={dropped}",
        if control_up { "yes" } else { "no" }
    );
    assert!(!control_up, "up without IKE fragmentation: {out}");
    assert!(dropped > 0, "the path dropped no IP fragment");
    charon.stop();

    let cdir = dir.join("frag");
    swanctl_creds(&pki, &cdir, &creds);
    std::fs::write(cdir.join("swanctl.conf"), conf("yes")).unwrap();
    let charon = Charon::start_env(&lab.ns("rw"), &cdir, &env);
    let before = fragments_dropped(&lab.ns("rw"), "eth0");
    let out = charon.swanctl(&["--initiate", "--child", "net", "--timeout", "20"]);
    let log = std::fs::read_to_string(cdir.join("charon.log")).unwrap_or_default();
    let up = out.contains("initiate completed successfully");
    let view = ike_view(&gw.socket);
    assert!(
        up,
        "{out}\ncharon log:\n{log}\nroamgate view: {view}{}",
        if roamgate_off {
            "\n(FRAG_OFF=1: roamgate's fragmentation is off, so this failure is expected)"
        } else {
            ""
        }
    );
    assert!(log.contains("splitting IKE message"), "{log}");
    assert!(log.contains("reassembled fragmented IKE message"), "{log}");
    let ping = pings(&lab.ns("rw"), "10.9.0.10", 5);
    // The view is rebuilt on its own deadline: wait for the counters.
    let mut view = ike_view(&gw.socket);
    for _ in 0..50 {
        if counter(&view, "fragments_reassembled") > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        view = ike_view(&gw.socket);
    }
    let (sent, received) = (
        counter(&view, "fragments_sent"),
        counter(&view, "fragments_received"),
    );
    println!(
        "native-clients case=frag-mtu576 up=yes ping={ping}/5 lost={} fragments=sent:{sent},received:{received} chain_bytes={chain} ip_fragments_dropped={}",
        5 - ping,
        fragments_dropped(&lab.ns("rw"), "eth0") - before
    );
    assert_eq!(ping, 5, "ping through the tunnel");
    assert!(sent >= 4 && received >= 2, "{view}");
    charon.stop();
    let (stats, _) = gw.stop_with_output();
    println!("gateway counters: {stats}");
}

#[test]
fn roamgate_client_to_strongswan_gateway_over_mtu_576() {
    if !strongswan_or_skip("native_clients_frag", &[])
        || !roamgate_tests::have_tool("openssl", &["version"])
        || !roamgate_tests::have_tool("tc", &["-V"])
    {
        return;
    }
    let dir = scratch("native_clients_frag_client");
    let pki = make_pki(&dir);
    let p = |f: &str| pki.join(f).to_string_lossy().into_owned();
    let lab = ScriptLab::up(
        "cl-up",
        "cl-down",
        &format!("rgg{}", std::process::id() % 100_000),
    );
    small_path(&lab.ns("sgw"), "eth0");
    let sgw = "connections {
  rw {
    local_addrs = 192.0.2.1
    pools = vpool
    version = 2
    fragmentation = yes
    proposals = aes128gcm16-prfsha256-x25519
    local { auth = pubkey
      certs = gw.pem
      id = gw.roamgate.test }
    remote { auth = pubkey
      cacerts = ca.pem
      id = rw-rsa.roamgate.test }
    children {
      net { local_ts = 10.9.0.0/24
        esp_proposals = aes128gcm16
        start_action = none }
    }
  }
}
pools { vpool { addrs = 10.99.0.0/24 } }
";
    let cdir = dir.join("sgw");
    swanctl_creds(
        &pki,
        &cdir,
        &[
            ("x509", "gw.pem"),
            ("private", "gw.key"),
            ("x509ca", "ca.pem"),
            ("x509ca", "intermediate.pem"),
        ],
    );
    std::fs::write(cdir.join("swanctl.conf"), sgw).unwrap();
    let charon = Charon::start_env(&lab.ns("sgw"), &cdir, &[("FRAGMENT_SIZE", "576")]);
    let cfg = std::fs::read_to_string(root().join("configs/client.yaml")).unwrap();
    let psk = "      local_id: rw.roamgate.test\n      remote_id: gw.roamgate.test\n      psk: \"lab-psk-not-secret\"\n";
    assert!(cfg.contains(psk), "the client config changed");
    let cfg = cfg.replace(
        psk,
        &format!(
            "      local_id: rw-rsa.roamgate.test\n      remote_id: gw.roamgate.test\n      auth: pubkey\n      cert: {}\n      key: {}\n      cacerts: [{}]\n",
            p("rw-rsa.pem"),
            p("rw-rsa.key"),
            p("ca.pem")
        ),
    );
    let cfg_path = dir.join("client.yaml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let client = DataplaneProcess::start_sub(
        Path::new(BIN.as_str()),
        "client",
        &lab.ns("cl"),
        &cfg_path,
        &dir,
        "cl",
        &["--shm", dir.join("cl.shm").to_str().unwrap()],
    );
    let up = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        ike_view(&client.socket)["virtual_ip"].as_str() == Some("10.99.0.1")
    });
    let log = std::fs::read_to_string(cdir.join("charon.log")).unwrap_or_default();
    assert!(
        up,
        "the client's tunnel: {}\ncharon log:\n{log}",
        ike_view(&client.socket)
    );
    assert!(log.contains("splitting IKE message"), "{log}");
    assert!(log.contains("reassembled fragmented IKE message"), "{log}");
    let ping = pings(&lab.ns("home"), "10.9.0.10", 5);
    let mut view = ike_view(&client.socket);
    for _ in 0..50 {
        if counter(&view, "fragments_reassembled") > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        view = ike_view(&client.socket);
    }
    let (sent, received) = (
        counter(&view, "fragments_sent"),
        counter(&view, "fragments_received"),
    );
    println!(
        "native-clients case=frag-mtu576-roamgate-client up=yes ping={ping}/5 lost={} fragments=sent:{sent},received:{received}",
        5 - ping
    );
    assert_eq!(ping, 5, "ping through the tunnel");
    assert!(sent >= 2 && received >= 4, "{view}");
    let (stats, _) = client.stop_with_output();
    println!("client counters: {stats}");
    drop(charon);
}
