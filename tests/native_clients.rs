//! Road warriors as the native clients authenticate, played by Debian's strongSwan 5.9.8 in
//! network namespaces (vendor-scripts/netns-lab.sh rw-up) against `roamgate run`: each case
//! brings the tunnel up with certificates (vendor-scripts/make-test-ca.sh makes the PKI: the
//! gateway's certificate comes from an intermediate CA that roamgate sends along), pings the
//! gateway's LAN host, sends a UDP stream and rekeys the CHILD_SA, and prints one line:
//! `native-clients case=<name> up=yes ping=5/5 udp=<datagrams> lost=<n> rekey=yes`.
//!
//! Cases: an Android-like RSA client with RFC 7427 signatures (PKCS#1 v1.5 SHA-256), the same
//! with RSASSA-PSS, and an ECDSA P-256 client; clients of another CA, refused and counted as
//! `auth_unknown_ca` (or `auth_chain_signature_invalid` for a CA that has our root's name but
//! another key); and roamgate as the client (ECDSA P-256) against strongSwan as the
//! gateway. The log of strongSwan names the scheme each side signed with; the test checks it.
//!
//! Needs root (prints a SKIP line otherwise), strongSwan, openssl, iperf3.

use std::path::{Path, PathBuf};
use std::time::Duration;

use roamgate_tests::netns::{DataplaneProcess, NsProcess};
use roamgate_tests::strongswan::{
    ike_view, iperf_udp, pings, strongswan_or_skip, Charon, ScriptLab,
};
use roamgate_tests::{root, scratch};

/// The binary under test: `ROAMGATE_BIN` (the release build `.ci/run` makes) or this build's.
static BIN: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| roamgate_tests::roamgate_bin(env!("CARGO_BIN_EXE_roamgate")));

/// The test PKI, made by the shipped script, its CAs named after `org`.
fn make_pki(dir: &Path, org: &str) -> PathBuf {
    let pki = dir.join("pki");
    let out = std::process::Command::new("bash")
        .arg(root().join("vendor-scripts/make-test-ca.sh"))
        .arg(&pki)
        .env("ORG", org)
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

/// Puts PKI files into the swanctl credential folders of `dir` (charon-netns.sh points
/// swanctl there): `(folder, file)` pairs.
fn swanctl_creds(pki: &Path, dir: &Path, files: &[(&str, &str)]) {
    for (folder, f) in files {
        std::fs::create_dir_all(dir.join(folder)).unwrap();
        std::fs::copy(pki.join(f), dir.join(folder).join(f)).unwrap();
    }
}

/// strongSwan as a client with `who`'s certificate and key of the PKI (put in `dir`'s
/// credential folders) and `auth` (swanctl's syntax), trusting the root CA.
fn client_conf(pki: &Path, dir: &Path, who: &str, auth: &str) -> String {
    swanctl_creds(
        pki,
        dir,
        &[
            ("x509", &format!("{who}.pem")),
            ("private", &format!("{who}.key")),
            ("x509ca", "ca.pem"),
        ],
    );
    format!(
        "connections {{
  gw {{
    remote_addrs = 192.0.2.1
    vips = 0.0.0.0
    version = 2
    proposals = aes128gcm16-prfsha256-x25519
    local {{ auth = {auth}
      certs = {who}.pem
      id = {who}.roamgate.test }}
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
    let pki = make_pki(&dir, "roamgate test");
    let lab = ScriptLab::up(
        "rw-up",
        "rw-down",
        &format!("rgn{}", std::process::id() % 100_000),
    );
    let cfg_path = dir.join("gw.yaml");
    std::fs::write(&cfg_path, gateway_config(&pki)).unwrap();
    let gw = DataplaneProcess::start_sub(
        Path::new(BIN.as_str()),
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
        let conf = client_conf(&pki, &cdir, case.who, case.auth);
        let charon = Charon::start_with(&lab.ns("rw"), &cdir, &conf);
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
        charon.stop();
    }
    // The IKE view counted no authentication failure on the way.
    let v = ike_view(&gw.socket);
    assert_eq!(v["ike_auth_failures"], serde_json::json!({}), "{v}");

    // Clients whose certificates come from another CA: refused, counted by that reason, and
    // strongSwan hears AUTHENTICATION_FAILED. A CA of another name is unknown; one that has
    // our root's name but not its key fails on the chain's signature.
    for (case, org, reason) in [
        ("unknown-ca", "stranger test", "auth_unknown_ca"),
        (
            "same-name-other-key-ca",
            "roamgate test",
            "auth_chain_signature_invalid",
        ),
    ] {
        let stranger = make_pki(&dir.join(case), org);
        let cdir = dir.join(case).join("rw");
        let conf = client_conf(&stranger, &cdir, "rw-ecdsa", "pubkey");
        // It trusts our root, so only the gateway has reason to refuse.
        std::fs::copy(pki.join("ca.pem"), cdir.join("x509ca/ca.pem")).unwrap();
        let charon = Charon::start_with(&lab.ns("rw"), &cdir, &conf);
        let out = charon.swanctl(&["--initiate", "--child", "net"]);
        assert!(!out.contains("initiate completed successfully"), "{out}");
        let log = std::fs::read_to_string(cdir.join("charon.log")).unwrap_or_default();
        assert!(
            log.contains("received AUTHENTICATION_FAILED notify"),
            "{case}: strongSwan was told: {log}"
        );
        // The view is rebuilt on its own deadline: wait for it.
        let count = || ike_view(&gw.socket)["ike_auth_failures"][reason].as_u64();
        let seen = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            count() >= Some(1)
        });
        println!(
            "native-clients case={case} up=no reason={reason} count={}",
            count().unwrap_or(0)
        );
        assert!(seen, "{case}: {}", ike_view(&gw.socket));
        charon.stop();
    }
    drop(server);
    let (stats, _) = gw.stop_with_output();
    println!("gateway counters: {stats}");
}

/// roamgate as the client with an ECDSA P-256 certificate against strongSwan as the gateway
/// with the RSA certificate of the intermediate CA (strongSwan sends the intermediate along).
#[test]
fn roamgate_client_with_a_certificate_against_a_strongswan_gateway() {
    if !strongswan_or_skip("native_clients", &[])
        || !roamgate_tests::have_tool("openssl", &["version"])
    {
        return;
    }
    let dir = scratch("native_clients_client");
    let pki = make_pki(&dir, "roamgate test");
    let p = |f: &str| pki.join(f).to_string_lossy().into_owned();
    let lab = ScriptLab::up(
        "cl-up",
        "cl-down",
        &format!("rgm{}", std::process::id() % 100_000),
    );
    let sgw = "connections {
  rw {
    local_addrs = 192.0.2.1
    pools = vpool
    version = 2
    proposals = aes128gcm16-prfsha256-x25519
    local { auth = pubkey
      certs = gw.pem
      id = gw.roamgate.test }
    remote { auth = pubkey
      cacerts = ca.pem
      id = rw-ecdsa.roamgate.test }
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
    let charon = Charon::start_with(&lab.ns("sgw"), &cdir, sgw);
    let cfg = std::fs::read_to_string(root().join("configs/client.yaml")).unwrap();
    let psk = "      local_id: rw.roamgate.test\n      remote_id: gw.roamgate.test\n      psk: \"lab-psk-not-secret\"\n";
    assert!(cfg.contains(psk), "the client config changed");
    let cfg = cfg.replace(
        psk,
        &format!(
            "      local_id: rw-ecdsa.roamgate.test\n      remote_id: gw.roamgate.test\n      auth: pubkey\n      cert: {}\n      key: {}\n      cacerts: [{}]\n",
            p("rw-ecdsa.pem"),
            p("rw-ecdsa.key"),
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
    assert!(
        log.contains("authentication of 'rw-ecdsa.roamgate.test' with ECDSA_WITH_SHA256_DER"),
        "{log}"
    );
    let ping = pings(&lab.ns("home"), "10.9.0.10", 5);
    let rekey = charon
        .swanctl(&["--rekey", "--child", "net"])
        .contains("rekey completed successfully")
        && pings(&lab.ns("home"), "10.9.0.10", 2) == 2;
    println!(
        "native-clients case=roamgate-client-ecdsa-vs-strongswan-gw up=yes ping={ping}/5 rekey={}",
        if rekey { "yes" } else { "no" }
    );
    assert_eq!(ping, 5, "ping through the tunnel");
    assert!(rekey, "rekey");
    let (stats, _) = client.stop_with_output();
    println!("client counters: {stats}");
    drop(charon);
}
