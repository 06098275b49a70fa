//! Road warriors as the native clients authenticate, played by Debian's strongSwan 5.9.8 in
//! network namespaces (vendor-scripts/netns-lab.sh rw-up) against `roamgate run`: each case
//! brings the tunnel up with certificates (vendor-scripts/make-test-ca.sh makes the PKI: the
//! gateway's certificate comes from an intermediate CA that roamgate sends along), pings the
//! gateway's LAN host, sends a UDP stream and rekeys the CHILD_SA, and prints one line:
//! `native-clients case=<name> up=yes ping=5/5 udp=<datagrams> lost=<n> rekey=yes`.
//!
//! Cases: an Android-like RSA client with RFC 7427 signatures (PKCS#1 v1.5 SHA-256), the same
//! with RSASSA-PSS, and an ECDSA P-256 client. The log of strongSwan names the scheme each side
//! signed with; the test checks it.
//!
//! Needs root (prints a SKIP line otherwise), strongSwan, openssl, iperf3.

use std::path::{Path, PathBuf};
use std::time::Duration;

use roamgate_tests::netns::{DataplaneProcess, NsProcess};
use roamgate_tests::strongswan::{
    ike_view, iperf_udp, pings, strongswan_or_skip, Charon, ScriptLab,
};
use roamgate_tests::{root, scratch};

const BIN: &str = env!("CARGO_BIN_EXE_roamgate");

/// The test PKI, made by the shipped script.
fn make_pki(dir: &Path) -> PathBuf {
    let pki = dir.join("pki");
    let out = std::process::Command::new("bash")
        .arg(root().join("vendor-scripts/make-test-ca.sh"))
        .arg(&pki)
        .output()
        .expect("make-test-ca.sh");
    assert!(
        out.status.success(),
        "make-test-ca.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    pki
}

/// The interop gateway's config with certificates in place of the pre-shared key; any client
/// identity its certificate vouches for is taken.
fn gateway_config(pki: &Path) -> String {
    let p = |f: &str| pki.join(f).to_string_lossy().into_owned();
    let cfg = std::fs::read_to_string(root().join("configs/interop-gw.yaml")).unwrap();
    let psk = "      remote_id: rw.roamgate.test\n      psk: \"lab-psk-not-secret\"\n";
    assert!(cfg.contains(psk), "the interop config changed");
    cfg.replace(
        psk,
        &format!(
            "      auth: pubkey\n      cert: {}\n      key: {}\n      cacerts: [{}]\n      crls: [{}]\n",
            p("gw-chain.pem"),
            p("gw.key"),
            p("ca.pem"),
            p("ca.crl")
        ),
    )
}

/// strongSwan as a client with `cert`/`key` of the PKI and `auth` (swanctl's syntax).
fn client_conf(pki: &Path, who: &str, auth: &str) -> String {
    let p = |f: &str| pki.join(f).to_string_lossy().into_owned();
    format!(
        "connections {{
  gw {{
    remote_addrs = 192.0.2.1
    vips = 0.0.0.0
    version = 2
    proposals = aes128gcm16-prfsha256-x25519
    local {{ auth = {auth}
      certs = {cert}
      id = {who}.roamgate.test }}
    remote {{ auth = pubkey
      cacerts = {ca}
      id = gw.roamgate.test }}
    children {{
      net {{ remote_ts = 10.9.0.0/24
        esp_proposals = aes128gcm16
        start_action = none }}
    }}
  }}
}}
secrets {{ private-rw {{ file = {key} }} }}
",
        cert = p(&format!("{who}.pem")),
        key = p(&format!("{who}.key")),
        ca = p("ca.pem"),
    )
}

struct Case {
    name: &'static str,
    who: &'static str,
    auth: &'static str,
    /// What strongSwan's log says it signed with, and what it verified ours with.
    ours: &'static str,
    theirs: &'static str,
}

#[test]
fn native_clients_with_certificates_against_roamgate_run() {
    if !strongswan_or_skip("native_clients", &["iperf3"])
        || !roamgate_tests::have_tool("openssl", &["version"])
    {
        return;
    }
    let dir = scratch("native_clients");
    let pki = make_pki(&dir);
    let lab = ScriptLab::up(
        "rw-up",
        "rw-down",
        &format!("rgn{}", std::process::id() % 100_000),
    );
    let cfg_path = dir.join("gw.yaml");
    std::fs::write(&cfg_path, gateway_config(&pki)).unwrap();
    let gw = DataplaneProcess::start_sub(
        Path::new(BIN),
        "run",
        &lab.ns("gw"),
        &cfg_path,
        &dir,
        "gw",
        &["--shm", dir.join("control.shm").to_str().unwrap()],
    );
    let server = NsProcess::spawn(
        &lab.ns("lan"),
        &["iperf3", "-s", "-B", "10.9.0.10"],
        "iperf3 -s",
    );
    std::thread::sleep(Duration::from_millis(500));
    let cases = [
        Case {
            name: "android-rsa-rfc7427",
            who: "rw-rsa",
            auth: "pubkey",
            ours: "RSA_EMSA_PKCS1_SHA2_256",
            theirs: "RSA_EMSA_PKCS1_SHA2_256",
        },
        Case {
            name: "rsa-pss-rfc7427",
            who: "rw-rsa",
            auth: "rsa/pss-sha256",
            ours: "RSA_EMSA_PSS_SHA2_256",
            theirs: "RSA_EMSA_PKCS1_SHA2_256",
        },
        Case {
            name: "ecdsa-p256",
            who: "rw-ecdsa",
            auth: "pubkey",
            ours: "ECDSA_WITH_SHA256_DER",
            theirs: "RSA_EMSA_PKCS1_SHA2_256",
        },
    ];
    for case in &cases {
        let cdir = dir.join(case.name);
        let charon = Charon::start_with(
            &lab.ns("rw"),
            &cdir,
            &client_conf(&pki, case.who, case.auth),
        );
        let out = charon.swanctl(&["--initiate", "--child", "net"]);
        let log = std::fs::read_to_string(cdir.join("charon.log")).unwrap_or_default();
        assert!(
            out.contains("initiate completed successfully"),
            "{}: {out}\ncharon log:\n{log}\nroamgate view: {}",
            case.name,
            ike_view(&gw.socket)
        );
        let myself = format!(
            "authentication of '{}.roamgate.test' (myself) with {}",
            case.who, case.ours
        );
        assert!(
            log.contains(&myself),
            "{}: no '{myself}' in\n{log}",
            case.name
        );
        let peer = format!("authentication of 'gw.roamgate.test' with {}", case.theirs);
        assert!(log.contains(&peer), "{}: no '{peer}' in\n{log}", case.name);
        let ping = pings(&lab.ns("rw"), "10.9.0.10", 5);
        assert_eq!(ping, 5, "{}: ping through the tunnel", case.name);
        let (udp, lost) = iperf_udp(&lab.ns("rw"), "10.9.0.10", "10M", 2);
        assert!(udp > 500, "{}: UDP stream of {udp} datagrams", case.name);
        let rekey = charon
            .swanctl(&["--rekey", "--child", "net"])
            .contains("rekey completed successfully");
        let after = pings(&lab.ns("rw"), "10.9.0.10", 2);
        println!(
            "native-clients case={} up=yes ping={ping}/5 udp={udp} lost={lost} rekey={}",
            case.name,
            if rekey && after == 2 { "yes" } else { "no" }
        );
        assert!(rekey && after == 2, "{}: rekey", case.name);
        assert!(
            lost * 100 <= udp,
            "{}: {lost} of {udp} UDP datagrams lost",
            case.name
        );
        assert!(charon
            .swanctl(&["--terminate", "--ike", "gw"])
            .contains("terminate completed successfully"));
        drop(charon);
    }
    // The IKE view counted no authentication failure on the way.
    let v = ike_view(&gw.socket);
    let drops = v["ike_drops"].to_string();
    assert!(!drops.contains("auth_"), "{drops}");
    drop(server);
    let (stats, _) = gw.stop_with_output();
    println!("gateway counters: {stats}");
}
