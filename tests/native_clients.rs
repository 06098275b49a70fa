//! Road warriors as the native clients authenticate, played by Debian's strongSwan 5.9.8 in
//! network namespaces (vendor-scripts/netns-lab.sh rw-up) against `roamgate run`: each case
//! brings the tunnel up with certificates (vendor-scripts/make-test-ca.sh makes the PKI: the
//! gateway's certificate comes from an intermediate CA that roamgate sends along), pings the
//! gateway's LAN host, sends a UDP stream and rekeys the CHILD_SA, and prints one line:
//! `native-clients case=<name> up=yes ping=5/5 udp=<datagrams> lost=<n> rekey=yes`.
//!
//! Cases: an Android-like RSA client with RFC 7427 signatures (PKCS#1 v1.5 SHA-256), the same
//! with RSASSA-PSS, and an ECDSA P-256 client; an iOS-like client (ESP AES-CBC-256 with
//! HMAC-SHA2-256-128, no ESN) and a Windows-like one (ESP AES-CBC-256 with HMAC-SHA1-96), both
//! negotiated by IKE and checked in `swanctl --list-sas`; clients of another CA, refused and counted as
//! `auth_unknown_ca` (or `auth_chain_signature_invalid` for a CA that has our root's name but
//! another key); and roamgate as the client (ECDSA P-256) against strongSwan as the
//! gateway. The log of strongSwan names the scheme each side signed with; the test checks it.
//!
//! EAP (`windows_like_eap_against_roamgate_run`): Windows-like clients with EAP-MSCHAPv2
//! and Windows' ESP default, AES-CBC-256 with HMAC-SHA1-96 (a local user file made by
//! `roamgate eap-user`, and Debian's FreeRADIUS) and EAP-TLS
//! (FreeRADIUS), the gateway authenticated by its certificate, the CHILD_SA rekeyed under
//! the UDP stream:
//! `native-clients case=windows-eap-mschapv2 up=yes ping=5/5 udp=<n> lost=0 rekey=yes eap_identity=alice`;
//! and against the user file's gateway an Android-like client (Android 11+'s platform VPN:
//! EAP-MSCHAPv2, the gateway's RFC 7427 RSA signature, Android's AES-GCM / AES-CBC+SHA2
//! proposals without HMAC-SHA1, fragmentation and MOBIKE):
//! `native-clients case=android-eap-mschapv2 up=yes ping=5/5 udp=<n> lost=0 rekey=yes esp=<suite>`;
//! then ESP (scapy) from its address for an SPI the gateway does not have draws INVALID_SPI
//! inside the IKE SA (RFC 7296 3.10.1), seen in strongSwan's log, and the tunnel stays.
//!
//! roamgate as the client against strongSwan as the gateway sends a UDP stream each way
//! (tests/tools/udp_stream.py, 400 datagrams/s for 2 s) with the CHILD_SA rekeyed by the
//! gateway in its middle: `... udp=<both> lost=0 up=<sent>/<lost> down=<sent>/<lost> rekey=yes`.
//!
//! Needs root (prints a SKIP line otherwise), strongSwan, openssl, iperf3.

use std::path::{Path, PathBuf};
use std::time::Duration;

use roamgate_tests::netns::{wait_udp_bound, DataplaneProcess, NsProcess};
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
    // The native clients' ESP defaults: AES-CBC with HMAC-SHA2-256 (iOS/macOS) and with
    // HMAC-SHA1-96 (Windows; weak, so offered only because it is configured here).
    let esp = "      esp_proposals: [aes128gcm16, aes128gcm16-esn]\n";
    assert!(cfg.contains(esp), "the interop config changed");
    let cfg = cfg.replace(
        esp,
        "      esp_proposals: [aes128gcm16, aes128gcm16-esn, aes256-sha256, aes256-sha1]\n",
    );
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
/// credential folders) and `auth` (swanctl's syntax), trusting the root CA, proposing `ike`
/// and `esp` (swanctl's syntax).
fn client_conf(pki: &Path, dir: &Path, who: &str, auth: &str, ike: &str, esp: &str) -> String {
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
    proposals = {ike}
    local {{ auth = {auth}
      certs = {who}.pem
      id = {who}.roamgate.test }}
    remote {{ auth = pubkey
      cacerts = ca.pem
      id = gw.roamgate.test }}
    children {{
      net {{ remote_ts = 10.9.0.0/24
        esp_proposals = {esp}
        start_action = none }}
    }}
  }}
}}
"
    )
}

const GCM_IKE: &str = "aes128gcm16-prfsha256-x25519";

struct Case {
    name: &'static str,
    who: &'static str,
    auth: &'static str,
    /// What strongSwan's log says it signed with, and what it verified ours with.
    ours: &'static str,
    theirs: &'static str,
    /// Its IKE and ESP proposals (swanctl's syntax), and the CHILD_SA's proposal as
    /// `swanctl --list-sas` prints it.
    ike: &'static str,
    esp: &'static str,
    esp_name: &'static str,
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
            ike: GCM_IKE,
            esp: "aes128gcm16",
            esp_name: "AES_GCM_16-128",
        },
        Case {
            name: "rsa-pss-rfc7427",
            who: "rw-rsa",
            auth: "rsa/pss-sha256",
            ours: "RSA_EMSA_PSS_SHA2_256",
            theirs: "RSA_EMSA_PKCS1_SHA2_256",
            ike: GCM_IKE,
            esp: "aes128gcm16",
            esp_name: "AES_GCM_16-128",
        },
        Case {
            name: "ecdsa-p256",
            who: "rw-ecdsa",
            auth: "pubkey",
            ours: "ECDSA_WITH_SHA256_DER",
            theirs: "RSA_EMSA_PKCS1_SHA2_256",
            ike: GCM_IKE,
            esp: "aes128gcm16",
            esp_name: "AES_GCM_16-128",
        },
        // iOS/macOS's defaults: a certificate, IKE and ESP with AES-CBC-256 and
        // HMAC-SHA2-256-128, no ESN.
        Case {
            name: "ios-cert-aes256cbc-sha256",
            who: "rw-ecdsa",
            auth: "pubkey",
            ours: "ECDSA_WITH_SHA256_DER",
            theirs: "RSA_EMSA_PKCS1_SHA2_256",
            ike: "aes256-sha256-modp2048",
            esp: "aes256-sha256",
            esp_name: "AES_CBC-256/HMAC_SHA2_256_128",
        },
        // Windows's ESP default: AES-CBC-256 with HMAC-SHA1-96.
        Case {
            name: "windows-cert-aes256cbc-sha1",
            who: "rw-rsa",
            auth: "pubkey",
            ours: "RSA_EMSA_PKCS1_SHA2_256",
            theirs: "RSA_EMSA_PKCS1_SHA2_256",
            ike: "aes256-sha256-modp2048",
            esp: "aes256-sha1",
            esp_name: "AES_CBC-256/HMAC_SHA1_96",
        },
    ];
    for case in &cases {
        let cdir = dir.join(case.name);
        let conf = client_conf(&pki, &cdir, case.who, case.auth, case.ike, case.esp);
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
        let sas = charon.swanctl(&["--list-sas"]);
        assert!(
            sas.contains(case.esp_name),
            "{}: no {} in\n{sas}",
            case.name,
            case.esp_name
        );
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
        // Where a loss happened, the gateway's counters say whether it dropped anything
        // (by reason) or the datagrams never reached it (strongSwan's userspace ESP).
        assert!(
            lost * 100 <= udp,
            "{}: {lost} of {udp} UDP datagrams lost; gateway counters: {}",
            case.name,
            gw.stats()
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
        let conf = client_conf(
            &stranger,
            &cdir,
            "rw-ecdsa",
            "pubkey",
            GCM_IKE,
            "aes128gcm16",
        );
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

/// What the two UDP streams of `udp_both_ways` saw.
struct Streams([(u64, u64); 2]);

impl Streams {
    /// Both streams carried (more than 500 datagrams each) and nothing was lost.
    fn clean(&self) -> bool {
        self.0.iter().all(|&(sent, got)| sent > 500 && got == sent)
    }
}

impl std::fmt::Display for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [(up, up_got), (down, down_got)] = self.0;
        let lost = |sent: u64, got: u64| sent.saturating_sub(got);
        write!(
            f,
            "udp={} lost={} up={up}/{} down={down}/{}",
            up + down,
            lost(up, up_got) + lost(down, down_got),
            lost(up, up_got),
            lost(down, down_got)
        )
    }
}

/// A UDP stream each way between the client's home host and the LAN host (400 datagrams/s
/// for 2 s) with the CHILD_SA rekeyed by strongSwan, the gateway, in their middle; then two
/// pings on the new SAs. (The streams, whether the rekey completed and traffic follows.)
fn stream_and_rekey(lab: &ScriptLab, charon: &Charon) -> (Streams, bool) {
    let mut rekeyed = false;
    let streams = udp_both_ways(lab, 400, 2, || {
        rekeyed = charon
            .swanctl(&["--rekey", "--child", "net"])
            .contains("rekey completed successfully");
    });
    let after = pings(&lab.ns("home"), "10.9.0.10", 2) == 2;
    (Streams(streams), rekeyed && after)
}

/// roamgate as the client with an ECDSA P-256 certificate against strongSwan as the gateway
/// with the RSA certificate of the intermediate CA (strongSwan sends the intermediate along);
/// then roamgate logging in by EAP-MSCHAPv2 (`auth: eap`) to the same gateway taking EAP.
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
    assert_eq!(ping, 5, "ping through the tunnel");
    let (udp, rekey) = stream_and_rekey(&lab, &charon);
    println!(
        "native-clients case=roamgate-client-ecdsa-vs-strongswan-gw up=yes ping={ping}/5 {udp} rekey={}",
        if rekey { "yes" } else { "no" }
    );
    assert!(udp.clean(), "{udp}");
    assert!(rekey, "rekey");
    let (stats, _) = client.stop_with_output();
    println!("client counters: {stats}");
    drop(charon);

    // The same gateway taking road warriors by EAP-MSCHAPv2 (its certificate for itself), and
    // roamgate logging in as one (`auth: eap`, its password in a file).
    let edir = dir.join("sgw-eap");
    swanctl_creds(
        &pki,
        &edir,
        &[
            ("x509", "gw.pem"),
            ("private", "gw.key"),
            ("x509ca", "ca.pem"),
            ("x509ca", "intermediate.pem"),
        ],
    );
    let sgw_eap = sgw.replace(
        "    remote { auth = pubkey\n      cacerts = ca.pem\n      id = rw-ecdsa.roamgate.test }",
        "    remote { auth = eap-mschapv2\n      eap_id = %any }",
    ) + &format!(
        "secrets {{ eap-{EAP_USER} {{ id = {EAP_USER}\n    secret = \"{EAP_PASSWORD}\" }} }}\n"
    );
    assert!(sgw_eap.contains("eap-mschapv2"), "{sgw_eap}");
    let charon = Charon::start_with(&lab.ns("sgw"), &edir, &sgw_eap);
    let creds = dir.join("home.eap");
    std::fs::write(&creds, format!("{EAP_USER}:{EAP_PASSWORD}\n")).unwrap();
    let cfg = std::fs::read_to_string(root().join("configs/client.yaml"))
        .unwrap()
        .replace(
            psk,
            &format!(
                "      local_id: {EAP_USER}\n      remote_id: gw.roamgate.test\n      auth: eap\n      eap_credentials: {}\n      cacerts: [{}]\n",
                creds.display(),
                p("ca.pem")
            ),
        );
    let cfg_path = dir.join("client-eap.yaml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let client = DataplaneProcess::start_sub(
        Path::new(BIN.as_str()),
        "client",
        &lab.ns("cl"),
        &cfg_path,
        &dir,
        "cl-eap",
        &["--shm", dir.join("cl-eap.shm").to_str().unwrap()],
    );
    let up = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        ike_view(&client.socket)["virtual_ip"].as_str() == Some("10.99.0.1")
    });
    let log = std::fs::read_to_string(edir.join("charon.log")).unwrap_or_default();
    assert!(
        up,
        "the EAP client's tunnel: {}\ncharon log:\n{log}",
        ike_view(&client.socket)
    );
    assert!(
        log.contains("EAP method EAP_MSCHAPV2 succeeded, MSK established"),
        "{log}"
    );
    let v = ike_view(&client.socket);
    assert_eq!(v["ike_sas"][0]["eap_identity"], EAP_USER, "{v}");
    let ping = pings(&lab.ns("home"), "10.9.0.10", 5);
    assert_eq!(ping, 5, "ping through the EAP client's tunnel");
    let (udp, rekey) = stream_and_rekey(&lab, &charon);
    println!(
        "native-clients case=roamgate-client-eap-mschapv2-vs-strongswan-gw up=yes ping={ping}/5 {udp} rekey={}",
        if rekey { "yes" } else { "no" }
    );
    assert!(udp.clean(), "{udp}");
    assert!(rekey, "rekey");
    let (_, out) = client.stop_with_output();
    assert!(!out.contains(EAP_PASSWORD), "the password is never logged");
    drop(charon);
}

/// Paced UDP streams (tests/tools/udp_stream.py) between the client's home host and the LAN
/// host of the client lab, one each way (the way back answers the home host's hellos through
/// the client's masquerade), `pps` each for `secs`, with `during` run 0.8 s into them:
/// (sent, received) up and (sent, received) down.
fn udp_both_ways(lab: &ScriptLab, pps: u32, secs: u32, during: impl FnOnce()) -> [(u64, u64); 2] {
    let stream = root().join("tests/tools/udp_stream.py");
    let st = stream.to_str().unwrap();
    let (home, srv) = (lab.ns("home"), lab.ns("srv"));
    let (pps_s, secs_s, wait_s) = (pps.to_string(), secs.to_string(), (secs + 2).to_string());
    let recv = NsProcess::spawn(&srv, &["python3", st, "recv", "5001", &wait_s], "udp recv");
    let serve = NsProcess::spawn(
        &srv,
        &["python3", st, "serve", "5002", &pps_s, &secs_s],
        "udp serve",
    );
    wait_udp_bound(&srv, 5001, Duration::from_secs(20));
    wait_udp_bound(&srv, 5002, Duration::from_secs(20));
    let t = std::time::Instant::now();
    let fetch = NsProcess::spawn(
        &home,
        &["python3", st, "fetch", "10.9.0.10", "5002", &wait_s],
        "udp fetch",
    );
    let send = NsProcess::spawn(
        &home,
        &["python3", st, "send", "10.9.0.10", "5001", &pps_s, &secs_s],
        "udp send",
    );
    std::thread::sleep(Duration::from_millis(800));
    during();
    std::thread::sleep(Duration::from_secs(u64::from(secs) + 3).saturating_sub(t.elapsed()));
    let json = |p: NsProcess, what: &str, key: &str| -> u64 {
        let (_, out, _) = p.stop("TERM", Duration::from_secs(5));
        let v: serde_json::Value =
            serde_json::from_str(out.trim()).unwrap_or_else(|_| panic!("{what}: {out}"));
        v[key].as_u64().unwrap_or(0)
    };
    [
        (
            json(send, "sender", "sent"),
            json(recv, "receiver", "received"),
        ),
        (
            json(serve, "server", "sent"),
            json(fetch, "fetcher", "received"),
        ),
    ]
}

// ---- EAP-MSCHAPv2 (issue 19 item 2) ----------------------------------------------------

/// The EAP user of these cases and its password (a lab password: never use it anywhere else).
const EAP_USER: &str = "alice";
const EAP_PASSWORD: &str = "correct horse lab";
/// The RADIUS shared secret of the loopback FreeRADIUS (lab only).
const RADIUS_SECRET: &str = "lab-radius-secret";

/// The gateway's config authenticated by its certificate, its clients by EAP as `eap`
/// (the `ike.eap` section's body) says; any client identity.
fn eap_gateway_config(pki: &Path, eap: &str) -> String {
    let cfg = gateway_config(pki).replace(
        "      auth: pubkey\n",
        "      remote_id: any\n      auth: pubkey\n",
    );
    format!("{cfg}  eap:\n    connections: [rw]\n{eap}")
}

/// strongSwan as Windows' built-in client does EAP-TLS: its certificate checked by the RADIUS
/// server inside EAP, the gateway by its certificate in IKE.
fn eap_tls_client_conf(pki: &Path, dir: &Path) -> String {
    swanctl_creds(
        pki,
        dir,
        &[
            ("x509", "rw-ecdsa.pem"),
            ("private", "rw-ecdsa.key"),
            ("x509ca", "ca.pem"),
        ],
    );
    "connections {
  gw {
    remote_addrs = 192.0.2.1
    vips = 0.0.0.0
    version = 2
    proposals = aes128gcm16-prfsha256-x25519
    local { auth = eap-tls
      certs = rw-ecdsa.pem
      id = rw-ecdsa.roamgate.test }
    remote { auth = pubkey
      cacerts = ca.pem
      id = gw.roamgate.test }
    children {
      net { remote_ts = 10.9.0.0/24
        esp_proposals = aes128gcm16
        start_action = none }
    }
  }
}
"
    .into()
}

/// strongSwan as Windows' built-in client would do it: EAP-MSCHAPv2 with a user name and
/// password, the gateway by its certificate (no client certificate), and Windows' default ESP
/// suite, AES-CBC-256 with HMAC-SHA1-96 (IKE: AES-CBC-256 with SHA2-256 and MODP-2048, which
/// Windows offers when so configured; its default MODP-1024 is not supported).
fn eap_client_conf(pki: &Path, dir: &Path, password: &str) -> String {
    swanctl_creds(pki, dir, &[("x509ca", "ca.pem")]);
    format!(
        "connections {{
  gw {{
    remote_addrs = 192.0.2.1
    vips = 0.0.0.0
    version = 2
    proposals = aes256-sha256-modp2048
    local {{ auth = eap-mschapv2
      id = {EAP_USER}
      eap_id = {EAP_USER} }}
    remote {{ auth = pubkey
      cacerts = ca.pem
      id = gw.roamgate.test }}
    children {{
      net {{ remote_ts = 10.9.0.0/24
        esp_proposals = aes256-sha1
        start_action = none }}
    }}
  }}
}}
secrets {{
  eap-{EAP_USER} {{ id = {EAP_USER}
    secret = \"{password}\" }}
}}
"
    )
}

/// strongSwan as Android 11+'s platform VPN ("IKEv2/IPSec MSCHAPv2") does it: EAP-MSCHAPv2
/// with the user name and password, its own identity an FQDN, the gateway's identity its host
/// name; the gateway checked against the CA by an RFC 7427 signature with RSA PKCS#1 v1.5 and
/// SHA-2 (Android's IKE library verifies `SHA{1,256,384,512}withRSA` only, no RSA-PSS); the
/// proposals of Android's `VpnIkev2Utils` (IKE: AES-CBC with HMAC-SHA2/AES-XCBC, or AES-GCM
/// 16/12/8, PRF SHA2/AES-XCBC/SHA1, DH MODP-4096, Curve25519, MODP-3072, MODP-2048; ESP:
/// AES-CBC with HMAC-SHA2 or AES-GCM, no HMAC-SHA1, no PFS; AES-CMAC left out: Debian's
/// strongSwan has no cmac plugin); IKE fragmentation and MOBIKE on.
fn android_eap_client_conf(pki: &Path, dir: &Path) -> String {
    swanctl_creds(pki, dir, &[("x509ca", "ca.pem")]);
    let dh_prf =
        "prfsha512-prfsha384-prfsha256-prfaesxcbc-prfsha1-modp4096-curve25519-modp3072-modp2048";
    format!(
        "connections {{
  gw {{
    remote_addrs = 192.0.2.1
    vips = 0.0.0.0
    version = 2
    fragmentation = yes
    mobike = yes
    proposals = aes256-aes192-aes128-sha512-sha384-sha256-aesxcbc-{dh_prf}, aes256gcm16-aes256gcm12-aes256gcm8-aes192gcm16-aes192gcm12-aes192gcm8-aes128gcm16-aes128gcm12-aes128gcm8-{dh_prf}
    local {{ auth = eap-mschapv2
      id = phone.roamgate.test
      eap_id = {EAP_USER} }}
    remote {{ auth = rsa-sha256-sha384-sha512
      cacerts = ca.pem
      id = gw.roamgate.test }}
    children {{
      net {{ remote_ts = 10.9.0.0/24
        esp_proposals = aes256-aes192-aes128-sha512-sha384-sha256, aes256gcm16-aes256gcm12-aes256gcm8-aes192gcm16-aes192gcm12-aes192gcm8-aes128gcm16-aes128gcm12-aes128gcm8
        start_action = none }}
    }}
  }}
}}
secrets {{
  eap-{EAP_USER} {{ id = {EAP_USER}
    secret = \"{EAP_PASSWORD}\" }}
}}
"
    )
}

/// An iperf3 UDP stream from `ns` to the LAN host (2 s at 10 Mbit/s) with a CHILD_SA rekey
/// by `charon` 0.8 s into it: (datagrams, lost, rekey completed).
fn stream_with_rekey(charon: &Charon, ns: &str) -> (u64, u64, bool) {
    std::thread::scope(|s| {
        let stream = s.spawn(|| iperf_udp(ns, "10.9.0.10", "10M", 2));
        std::thread::sleep(Duration::from_millis(800));
        let rekey = charon
            .swanctl(&["--rekey", "--child", "net"])
            .contains("rekey completed successfully");
        let (udp, lost) = stream.join().expect("iperf3 thread");
        (udp, lost, rekey)
    })
}

/// The SPIs (in, out) of the CHILD_SAs as `swanctl --list-sas` prints them.
fn child_spis(charon: &Charon) -> Vec<String> {
    charon
        .swanctl(&["--list-sas"])
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("in ") || l.starts_with("out "))
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|spi| spi.trim_end_matches(',').to_owned())
        .collect()
}

/// A FreeRADIUS configuration in `dir` (Debian's, copied) with our client's secret, the EAP
/// user, EAP-MSCHAPv2 first and privileges kept (the files are ours).
fn freeradius_conf(dir: &Path, pki: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let conf = dir.join("raddb");
    let st = std::process::Command::new("cp")
        .args(["-a", "/etc/freeradius/3.0"])
        .arg(&conf)
        .status()
        .expect("cp");
    assert!(st.success(), "copying /etc/freeradius/3.0");
    std::fs::write(
        conf.join("clients.conf"),
        format!(
            "client roamgate {{\n  ipaddr = 127.0.0.1\n  secret = {RADIUS_SECRET}\n  require_message_authenticator = yes\n}}\n"
        ),
    )
    .unwrap();
    let users = conf.join("mods-config/files/authorize");
    let old = std::fs::read_to_string(&users).unwrap();
    std::fs::write(
        &users,
        format!("{EAP_USER} Cleartext-Password := \"{EAP_PASSWORD}\"\n{old}"),
    )
    .unwrap();
    let eap = conf.join("mods-available/eap");
    let e = std::fs::read_to_string(&eap).unwrap();
    assert!(
        e.contains("default_eap_type = md5"),
        "Debian's eap module changed"
    );
    // EAP-TLS: the gateway's certificate and chain serve as the RADIUS server's, client
    // certificates chain to the test root.
    let p = |f: &str| pki.join(f).display().to_string();
    let e = e
        .replace("default_eap_type = md5", "default_eap_type = mschapv2")
        .replace(
            "private_key_file = /etc/ssl/private/ssl-cert-snakeoil.key",
            &format!("private_key_file = {}", p("gw.key")),
        )
        .replace(
            "certificate_file = /etc/ssl/certs/ssl-cert-snakeoil.pem",
            &format!("certificate_file = {}", p("gw-chain.pem")),
        )
        .replace(
            "ca_file = /etc/ssl/certs/ca-certificates.crt",
            &format!("ca_file = {}", p("ca.pem")),
        );
    std::fs::write(&eap, e).unwrap();
    let r = conf.join("radiusd.conf");
    let t = std::fs::read_to_string(&r).unwrap();
    std::fs::write(
        &r,
        t.replace("\tuser = freerad\n", "")
            .replace("\tgroup = freerad\n", ""),
    )
    .unwrap();
    conf
}

/// FreeRADIUS in `ns` (the gateway's namespace: its ports 1812/1813 are ours), up when it
/// says so.
fn freeradius(ns: &str, conf: &Path, log: &Path) -> NsProcess {
    let p = NsProcess::spawn(
        ns,
        &[
            "sh",
            "-c",
            &format!(
                "exec freeradius -X -f -d {} > {} 2>&1",
                conf.display(),
                log.display()
            ),
        ],
        "freeradius",
    );
    let up = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        std::fs::read_to_string(log).is_ok_and(|l| l.contains("Ready to process requests"))
    });
    assert!(
        up,
        "FreeRADIUS did not start: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    p
}

/// Windows-like EAP clients (strongSwan 5.9.8's eap-mschapv2 and eap-tls) against `roamgate
/// run` authenticated by its certificate: EAP-MSCHAPv2 against a local user file and through
/// FreeRADIUS (Debian's, on the gateway namespace's loopback), EAP-TLS through FreeRADIUS;
/// tunnel up, ping, UDP stream with 0 lost, the EAP identity on the IKE SA; a wrong password
/// refused, counted and logged by its reason. About 30 s.
#[test]
fn windows_like_eap_against_roamgate_run() {
    if !strongswan_or_skip("native_clients", &["iperf3"])
        || !roamgate_tests::have_tool("openssl", &["version"])
    {
        return;
    }
    let have_radius = roamgate_tests::have_tool("freeradius", &["-v"]);
    let dir = scratch("native_clients_eap");
    let pki = make_pki(&dir, "roamgate test");
    let lab = ScriptLab::up(
        "rw-up",
        "rw-down",
        &format!("rge{}", std::process::id() % 100_000),
    );
    let users = dir.join("eap-users");
    let line = std::process::Command::new(BIN.as_str())
        .args(["eap-user", EAP_USER])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(format!("{EAP_PASSWORD}\n").as_bytes())?;
            c.wait_with_output()
        })
        .expect("roamgate eap-user");
    let line = String::from_utf8(line.stdout).unwrap();
    assert!(
        !line.contains(EAP_PASSWORD) && line.starts_with("alice:"),
        "{line}"
    );
    std::fs::write(&users, &line).unwrap();
    let secret = dir.join("radius.secret");
    std::fs::write(&secret, format!("{RADIUS_SECRET}\n")).unwrap();
    let mut backends = vec![(
        "windows-eap-mschapv2",
        format!("    users_file: {}\n", users.display()),
    )];
    if have_radius {
        backends.push((
            "windows-eap-mschapv2-radius",
            format!(
                "    radius:\n      server: 127.0.0.1:1812\n      secret_file: {}\n      nas_identifier: gw.roamgate.test\n      timeout_ms: 2000\n      retries: 2\n",
                secret.display()
            ),
        ));
        backends.push((
            "windows-eap-tls-radius",
            format!(
                "    radius:\n      server: 127.0.0.1:1812\n      secret_file: {}\n      timeout_ms: 2000\n      retries: 2\n",
                secret.display()
            ),
        ));
    } else {
        println!("native-clients case=windows-eap-mschapv2-radius SKIP (no freeradius)");
    }
    let server = NsProcess::spawn(
        &lab.ns("lan"),
        &["iperf3", "-s", "-B", "10.9.0.10"],
        "iperf3 -s",
    );
    for (name, eap) in &backends {
        let radius = name.contains("radius").then(|| {
            let conf = freeradius_conf(&dir.join(name), &pki);
            freeradius(&lab.ns("gw"), &conf, &dir.join(name).join("radius.log"))
        });
        let cfg_path = dir.join(format!("{name}.yaml"));
        std::fs::write(&cfg_path, eap_gateway_config(&pki, eap)).unwrap();
        let gw = DataplaneProcess::start_sub(
            Path::new(BIN.as_str()),
            "run",
            &lab.ns("gw"),
            &cfg_path,
            &dir,
            "gw",
            &["--shm", dir.join(format!("{name}.shm")).to_str().unwrap()],
        );
        std::thread::sleep(Duration::from_millis(500));
        let tls = name.contains("eap-tls");
        let cdir = dir.join(name).join("rw");
        let conf = if tls {
            eap_tls_client_conf(&pki, &cdir)
        } else {
            eap_client_conf(&pki, &cdir, EAP_PASSWORD)
        };
        let charon = Charon::start_with(&lab.ns("rw"), &cdir, &conf);
        let out = charon.swanctl(&["--initiate", "--child", "net"]);
        let log = std::fs::read_to_string(cdir.join("charon.log")).unwrap_or_default();
        let radius_log =
            std::fs::read_to_string(dir.join(name).join("radius.log")).unwrap_or_default();
        assert!(
            out.contains("initiate completed successfully"),
            "{name}: {out}\ncharon log:\n{log}\nroamgate view: {}\nradius: {radius_log}",
            ike_view(&gw.socket)
        );
        let (method, user) = if tls {
            ("EAP_TLS", "rw-ecdsa.roamgate.test")
        } else {
            ("EAP_MSCHAPV2", EAP_USER)
        };
        assert!(
            log.contains(&format!("EAP method {method} succeeded, MSK established")),
            "{name}: {log}"
        );
        assert!(
            log.contains("authentication of 'gw.roamgate.test' with"),
            "{name}: the gateway's certificate AUTH: {log}"
        );
        let ping = pings(&lab.ns("rw"), "10.9.0.10", 5);
        assert_eq!(ping, 5, "{name}: ping through the tunnel");
        // The IKE SA carries the EAP identity (what per-user policy keys on).
        let v = ike_view(&gw.socket);
        let who = v["ike_sas"][0]["eap_identity"].as_str().map(str::to_owned);
        // The stream, with the CHILD_SA rekeyed under it (strongSwan initiates).
        let spis = child_spis(&charon);
        let (udp, lost, rekeyed) = stream_with_rekey(&charon, &lab.ns("rw"));
        let rekey =
            rekeyed && child_spis(&charon) != spis && pings(&lab.ns("rw"), "10.9.0.10", 2) == 2;
        println!(
            "native-clients case={name} up=yes ping={ping}/5 udp={udp} lost={lost} rekey={} eap_identity={}",
            if rekey { "yes" } else { "no" },
            who.as_deref().unwrap_or("-")
        );
        assert_eq!(who.as_deref(), Some(user), "{v}");
        assert!(udp > 500, "{name}: UDP stream of {udp} datagrams");
        assert_eq!(lost, 0, "{name}: {lost} of {udp} UDP datagrams lost");
        assert!(rekey, "{name}: the CHILD_SA rekey under traffic");
        charon.stop();
        if *name == "windows-eap-mschapv2" {
            android_eap_case(&lab, &gw, &pki, &dir.join("android-eap-mschapv2"));
        }
        if tls {
            let (_, output) = gw.stop_with_output();
            assert!(output.contains("established"), "{output}");
            if let Some(r) = radius {
                r.stop("TERM", Duration::from_secs(5));
            }
            continue;
        }

        // A wrong password: refused, counted by its reason.
        let bdir = dir.join(name).join("bad");
        let charon =
            Charon::start_with(&lab.ns("rw"), &bdir, &eap_client_conf(&pki, &bdir, "wrong"));
        let out = charon.swanctl(&["--initiate", "--child", "net"]);
        assert!(!out.contains("initiate completed successfully"), "{out}");
        let reason = if radius.is_some() {
            "auth_eap_radius_reject"
        } else {
            "auth_eap_wrong_password"
        };
        let count = || ike_view(&gw.socket)["ike_auth_failures"][reason].as_u64();
        let seen = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            count() >= Some(1)
        });
        println!(
            "native-clients case={name}-wrong-password up=no reason={reason} count={}",
            count().unwrap_or(0)
        );
        assert!(seen, "{name}: {}", ike_view(&gw.socket));
        charon.stop();
        let (_, output) = gw.stop_with_output();
        // The log says exactly why, never the password.
        let why = if radius.is_some() {
            "EapRadiusReject"
        } else {
            "EapWrongPassword"
        };
        assert!(
            output.contains(&format!("identity: Some(\"{EAP_USER}\"), why: {why}")),
            "{name}: the log does not say why: {output}"
        );
        assert!(!output.contains(EAP_PASSWORD), "{output}");
        if let Some(r) = radius {
            r.stop("TERM", Duration::from_secs(5));
        }
    }
    drop(server);
}

/// strongSwan as Android's platform VPN with EAP-MSCHAPv2 (`android_eap_client_conf`) against
/// the gateway `gw` taking EAP from the user file: up, the gateway's RFC 7427 RSA signature,
/// fragmentation and MOBIKE negotiated, an ESP suite without HMAC-SHA1, ping, a UDP stream
/// with a CHILD_SA rekey under it and nothing lost.
fn android_eap_case(lab: &ScriptLab, gw: &DataplaneProcess, pki: &Path, cdir: &Path) {
    let name = "android-eap-mschapv2";
    let charon = Charon::start_with(&lab.ns("rw"), cdir, &android_eap_client_conf(pki, cdir));
    let out = charon.swanctl(&["--initiate", "--child", "net"]);
    let log = std::fs::read_to_string(cdir.join("charon.log")).unwrap_or_default();
    assert!(
        out.contains("initiate completed successfully"),
        "{name}: {out}\ncharon log:\n{log}\nroamgate view: {}",
        ike_view(&gw.socket)
    );
    assert!(
        log.contains("EAP method EAP_MSCHAPV2 succeeded, MSK established"),
        "{name}: {log}"
    );
    // An RFC 7427 signature (method 14) with RSA PKCS#1 v1.5 and SHA-2: what Android verifies.
    assert!(
        log.contains("authentication of 'gw.roamgate.test' with RSA_EMSA_PKCS1_SHA2_"),
        "{name}: the gateway's signature: {log}"
    );
    // Fragmentation (RFC 7383) and MOBIKE (RFC 4555) agreed by the gateway.
    let parsed = |exchange: &str, notify: &str| {
        log.lines()
            .any(|l| l.contains(&format!("parsed {exchange} response")) && l.contains(notify))
    };
    assert!(
        parsed("IKE_SA_INIT", "N(FRAG_SUP)"),
        "{name}: fragmentation: {log}"
    );
    assert!(parsed("IKE_AUTH", "N(MOBIKE_SUP)"), "{name}: MOBIKE: {log}");
    // The gateway's IKE_AUTH answer with its certificate chain (about 2.3 KB) came in
    // fragments (RFC 7383), as Android takes them.
    assert!(
        log.contains("reassembled fragmented IKE message"),
        "{name}: no fragmented IKE message: {log}"
    );
    let sas = charon.swanctl(&["--list-sas"]);
    let esp = sas
        .lines()
        .find(|l| l.contains("net: #"))
        .and_then(|l| l.split("ESP:").nth(1))
        .map(str::trim)
        .unwrap_or("-")
        .to_owned();
    assert!(
        (esp.starts_with("AES_GCM_") || esp.starts_with("AES_CBC-")) && !esp.contains("SHA1"),
        "{name}: ESP {esp}: {sas}"
    );
    let ping = pings(&lab.ns("rw"), "10.9.0.10", 5);
    assert_eq!(ping, 5, "{name}: ping through the tunnel");
    let spis = child_spis(&charon);
    let (udp, lost, rekeyed) = stream_with_rekey(&charon, &lab.ns("rw"));
    let rekey = rekeyed && child_spis(&charon) != spis && pings(&lab.ns("rw"), "10.9.0.10", 2) == 2;
    println!(
        "native-clients case={name} up=yes ping={ping}/5 udp={udp} lost={lost} rekey={} esp={esp}",
        if rekey { "yes" } else { "no" }
    );
    assert!(udp > 500, "{name}: UDP stream of {udp} datagrams");
    assert_eq!(lost, 0, "{name}: {lost} of {udp} UDP datagrams lost");
    assert!(rekey, "{name}: the CHILD_SA rekey under traffic");

    // ESP in UDP from the client's IKE address and port for an SPI the gateway does not
    // have: INVALID_SPI goes to strongSwan inside the IKE SA (RFC 7296 3.10.1), which stays.
    let esp = "from scapy.all import IP, UDP, Raw, send\n\
send(IP(src='192.0.2.10', dst='192.0.2.1')/UDP(sport=4500, dport=4500)/\
Raw(bytes.fromhex('7e5a1d0000000001') + bytes(64)), count=3, verbose=False)";
    let sent = roamgate_tests::netns::in_ns(&lab.ns("rw"), &["python3", "-c", esp]);
    assert!(sent.status.success(), "scapy: {sent:?}");
    let told = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        std::fs::read_to_string(cdir.join("charon.log")).is_ok_and(|l| {
            l.lines()
                .any(|l| l.contains("parsed INFORMATIONAL request") && l.contains("INVAL_SPI"))
        })
    });
    let hints = ike_view(&gw.socket)["liveness_hints"].clone();
    let after = pings(&lab.ns("rw"), "10.9.0.10", 2);
    println!(
        "native-clients case={name}-unknown-spi invalid_spi_told_inside_ike_sa={} gateway_sent={} ping_after={after}/2",
        if told { "yes" } else { "no" },
        hints["invalid_spi_sent_protected"],
    );
    assert_eq!(after, 2, "{name}: the tunnel after INVALID_SPI");
    assert!(
        told,
        "{name}: no INVALID_SPI in strongSwan's log ({hints}): {}",
        std::fs::read_to_string(cdir.join("charon.log")).unwrap_or_default()
    );
    assert!(charon
        .swanctl(&["--terminate", "--ike", "gw"])
        .contains("terminate completed successfully"));
    charon.stop();
}
