//! Secure connections survive an address change (MOBIKE, RFC 4555), end to end in network
//! namespaces (vendor-scripts/netns-lab.sh mob-up, AF_XDP): a client moves from one access
//! network (192.0.2.10) to another (198.51.100.10) while a 1000 packet/s UDP stream runs from
//! behind it to the gateway's LAN host; make-before-break (the new address is added, the old
//! one removed a second later). For each pairing the test counts lost packets and the longest
//! gap in the stream and compares the SAs before and after:
//!
//! - `roamgate client` against `roamgate run`: 0 lost, same IKE SA and same CHILD_SA SPIs;
//! - Debian's strongSwan 5.9.8 as the client against `roamgate run` (its kernel-libipsec
//!   cannot move SA addresses, so it rekeys its CHILD_SA after the update; the IKE SA stays);
//! - `roamgate client` against strongSwan as the gateway;
//! - strongSwan against strongSwan: the reference, measured in the same run.
//!
//! A second test in the same lab, a road warrior that logs in by EAP-MSCHAPv2 (`auth: eap`,
//! its user name and password in a file; the gateway authenticated by its certificate from
//! vendor-scripts/make-test-ca.sh, its users in a file made by `roamgate eap-user`): up, ping,
//! the EAP identity on both ends' IKE SA; then the gateway (`roamgate run`) is killed with
//! SIGKILL and started again, losing every SA; the client finds out from the unprotected
//! INVALID_SPI its next ESP draws (RFC 7296 1.5) and the liveness check that starts
//! (`ike::exchange::hint`), logs in again by itself, and the test prints the time from the
//! new gateway being up to traffic flowing again (4.0 s in a debug build). About 15 s.
//!
//! Needs root (prints a SKIP line otherwise; CI runs it as root), strongSwan and python3.

use std::path::Path;
use std::time::Duration;

use roamgate_tests::netns::{in_ns, wait_udp_bound, DataplaneProcess, NsProcess};
use roamgate_tests::strongswan::{
    ike_view, pings, strongswan_or_skip, swanctl_conf, wait_for, Charon, ScriptLab,
};
use roamgate_tests::{root, scratch};

/// The binary under test: `ROAMGATE_BIN` (the release build `.ci/run` makes) or this build's.
static BIN: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| roamgate_tests::roamgate_bin(env!("CARGO_BIN_EXE_roamgate")));
const SERVER: &str = "10.9.0.10";
const PPS: u32 = 1000;
const SECS: u32 = 6;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Impl {
    Roamgate,
    StrongSwan,
}

/// What one roam did to the stream and the SAs.
#[derive(Debug)]
struct Outcome {
    sent: u64,
    received: u64,
    longest_gap_ms: f64,
    same_ike_sa: bool,
    same_child_spis: bool,
}

fn sh(ns: &str, cmd: &str) {
    let out = in_ns(ns, &["sh", "-c", cmd]);
    assert!(
        out.status.success(),
        "{ns}: {cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The client's CHILD_SA SPIs and IKE SA as its implementation lists them.
fn client_sas(client: Impl, sock: &Path, charon: Option<&Charon>) -> (String, Vec<String>) {
    match client {
        Impl::Roamgate => {
            // `run`/`client` serve the control plane's view at SOCK.ike; a single process
            // answers on its own socket.
            let mut ike = sock.as_os_str().to_owned();
            ike.push(".ike");
            let v = if Path::new(&ike).exists() {
                ike_view(sock)
            } else {
                roamgate_tests::strongswan::ask(sock, "ike")
            };
            let sa = &v["ike_sas"][0];
            let children = sa["children"]
                .as_array()
                .map(|c| {
                    c.iter()
                        .map(|x| format!("{}/{}", x["spi_in"], x["spi_out"]))
                        .collect()
                })
                .unwrap_or_default();
            (sa["ike_sa"].to_string(), children)
        }
        Impl::StrongSwan => {
            let out = charon.expect("charon").swanctl(&["--list-sas"]);
            let ike = out
                .lines()
                .find(|l| l.contains("ESTABLISHED"))
                .and_then(|l| l.split_whitespace().nth(3))
                .unwrap_or_default()
                .to_string();
            let children = out
                .lines()
                .filter(|l| l.trim_start().starts_with("in ") || l.trim_start().starts_with("out "))
                .map(|l| l.split_whitespace().nth(1).unwrap_or_default().to_string())
                .collect();
            (ike, children)
        }
    }
}

/// One roam; `single`: the roamgate client runs as one process (`client --single-process`).
fn run_case(client: Impl, gateway: Impl, single: bool, dir: &Path) -> Outcome {
    let lab = ScriptLab::up(
        "mob-up",
        "mob-down",
        &format!(
            "rgm{}{}",
            std::process::id() % 10_000,
            match (client, gateway) {
                (Impl::Roamgate, Impl::Roamgate) if single => "e",
                (Impl::Roamgate, Impl::Roamgate) => "a",
                (Impl::StrongSwan, Impl::Roamgate) => "b",
                (Impl::Roamgate, Impl::StrongSwan) => "c",
                (Impl::StrongSwan, Impl::StrongSwan) => "d",
            }
        ),
    );
    let name = format!(
        "{client:?}{}-{gateway:?}",
        if single { "-single" } else { "" }
    )
    .to_lowercase();
    let dir = dir.join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    let (cl, gw) = (lab.ns("cl"), lab.ns("gw"));

    // The gateway.
    let mut gw_charon = None;
    let mut gw_proc = None;
    match gateway {
        Impl::Roamgate => {
            gw_proc = Some(DataplaneProcess::start_sub(
                Path::new(BIN.as_str()),
                "run",
                &gw,
                &root().join("configs/mobike-gw.yaml"),
                &dir,
                "gw",
                &["--shm", dir.join("gw.shm").to_str().unwrap()],
            ))
        }
        Impl::StrongSwan => {
            sh(&gw, "ip addr add 203.0.113.1/24 dev wan && ip addr add 10.9.0.1/24 dev lan && ip route add default via 203.0.113.254 && sysctl -qw net.ipv4.ip_forward=1");
            let conf = swanctl_conf("gw-rw-psk.swanctl.conf")
                .replace("local_addrs = 192.0.2.1", "local_addrs = 203.0.113.1");
            gw_charon = Some(Charon::start_with(&gw, &dir.join("sgw"), &conf));
        }
    }

    // The client, and where its stream starts from.
    let mut cl_charon = None;
    let mut cl_proc = None;
    let shm = dir.join("cl.shm");
    let sender_ns = match client {
        Impl::Roamgate => {
            cl_proc = Some(DataplaneProcess::start_sub(
                Path::new(BIN.as_str()),
                "client",
                &cl,
                &root().join("configs/mobike-client.yaml"),
                &dir,
                "cl",
                &if single {
                    vec!["--single-process"]
                } else {
                    vec!["--shm", shm.to_str().unwrap()]
                },
            ));
            lab.ns("home")
        }
        Impl::StrongSwan => {
            sh(&cl, "ip route add default via 192.0.2.254");
            let conf = swanctl_conf("rw-psk.swanctl.conf")
                .replace("remote_addrs = 192.0.2.1", "remote_addrs = 203.0.113.1");
            let c = Charon::start_with(&cl, &dir.join("rw"), &conf);
            let out = c.swanctl(&["--initiate", "--child", "net"]);
            assert!(out.contains("initiate completed successfully"), "{out}");
            cl_charon = Some(c);
            cl.clone()
        }
    };
    wait_for("the tunnel", 20, || pings(&sender_ns, SERVER, 1) == 1);
    let cl_sock = dir.join("cl.sock");
    // The control plane's view is rebuilt on its own deadline: a tunnel that just came up
    // may not be in it yet.
    wait_for("the CHILD_SA in the client's view", 10, || {
        !client_sas(client, &cl_sock, cl_charon.as_ref())
            .1
            .is_empty()
    });
    let before = client_sas(client, &cl_sock, cl_charon.as_ref());

    // The stream, and the roam in the middle of it.
    let stream = root().join("tests/tools/udp_stream.py");
    let recv = NsProcess::spawn(
        &lab.ns("srv"),
        &[
            "python3",
            stream.to_str().unwrap(),
            "recv",
            "5001",
            &(SECS + 3).to_string(),
        ],
        "udp recv",
    );
    wait_udp_bound(&lab.ns("srv"), 5001, Duration::from_secs(20));
    let send = NsProcess::spawn(
        &sender_ns,
        &[
            "python3",
            stream.to_str().unwrap(),
            "send",
            SERVER,
            "5001",
            &PPS.to_string(),
            &SECS.to_string(),
        ],
        "udp send",
    );
    std::thread::sleep(Duration::from_secs(2));
    // Make-before-break: the new access network first, the old one a second later.
    sh(&cl, "ip addr add 198.51.100.10/24 dev wan");
    if client == Impl::StrongSwan {
        sh(&cl, "ip route replace default via 198.51.100.254");
    }
    std::thread::sleep(Duration::from_secs(1));
    sh(&cl, "ip addr del 192.0.2.10/24 dev wan");
    std::thread::sleep(Duration::from_secs(u64::from(SECS) + 1));
    let (_, sent_out, _) = send.stop("TERM", Duration::from_secs(5));
    let (_, recv_out, _) = recv.stop("TERM", Duration::from_secs(5));
    let sent: serde_json::Value =
        serde_json::from_str(sent_out.trim()).unwrap_or_else(|_| panic!("sender: {sent_out}"));
    let recvd: serde_json::Value =
        serde_json::from_str(recv_out.trim()).unwrap_or_else(|_| panic!("receiver: {recv_out}"));
    // Traffic still flows after the roam.
    assert_eq!(
        pings(&sender_ns, SERVER, 3),
        3,
        "{name}: traffic after the roam"
    );
    let after = client_sas(client, &cl_sock, cl_charon.as_ref());
    let outcome = Outcome {
        sent: sent["sent"].as_u64().unwrap_or(0),
        received: recvd["received"].as_u64().unwrap_or(0),
        longest_gap_ms: recvd["longest_gap_ms"].as_f64().unwrap_or(f64::INFINITY),
        same_ike_sa: !before.0.is_empty() && before.0 == after.0,
        same_child_spis: !before.1.is_empty() && before.1 == after.1,
    };
    if let Some(p) = cl_proc {
        let (_, out) = p.stop_with_output();
        // Kept for a look after a failure.
        let _ = std::fs::write(dir.join("cl.log"), &out);
        if client == Impl::Roamgate {
            assert!(
                out.contains("WAN address 192.0.2.10 -> 198.51.100.10"),
                "{name}: the client followed its address:\n{out}"
            );
        }
    }
    if let Some(p) = gw_proc {
        let (_, out) = p.stop_with_output();
        let _ = std::fs::write(dir.join("gw.log"), &out);
        if client == Impl::Roamgate {
            assert!(
                out.contains("moved (MOBIKE)"),
                "{name}: the gateway moved the SAs:\n{out}"
            );
        }
    }
    drop(cl_charon);
    drop(gw_charon);
    outcome
}

#[test]
fn a_client_changes_address_mid_stream() {
    if !strongswan_or_skip("mobike_netns", &["python3"]) {
        return;
    }
    let dir = scratch("mobike_netns");
    let mut table = Vec::new();
    for (c, g, single) in [
        (Impl::Roamgate, Impl::Roamgate, false),
        (Impl::Roamgate, Impl::Roamgate, true),
        (Impl::StrongSwan, Impl::Roamgate, false),
        (Impl::Roamgate, Impl::StrongSwan, false),
        (Impl::StrongSwan, Impl::StrongSwan, false),
    ] {
        let o = run_case(c, g, single, &dir);
        println!(
            "MOBIKE roam, make-before-break, {PPS} pkt/s: client {c:?}{} -> gateway {g:?}: lost {} of {}, longest gap {:.1} ms, same IKE SA {}, same CHILD_SA SPIs {}",
            if single { " (one process)" } else { "" },
            o.sent.saturating_sub(o.received),
            o.sent,
            o.longest_gap_ms,
            o.same_ike_sa,
            o.same_child_spis
        );
        table.push((c, g, o));
    }
    for (c, g, o) in &table {
        assert!(
            o.sent >= u64::from(PPS * SECS) * 9 / 10,
            "{c:?}/{g:?}: {o:?}"
        );
        assert!(o.same_ike_sa, "{c:?}/{g:?}: the IKE SA was kept: {o:?}");
        match (c, g) {
            (Impl::Roamgate, Impl::Roamgate) => {
                assert_eq!(o.received, o.sent, "roamgate <-> roamgate loses nothing");
                assert!(o.same_child_spis, "same SPIs, no rekey: {o:?}");
            }
            // strongSwan sides: traffic continues (the numbers are the comparison).
            _ => assert!(o.received * 10 >= o.sent * 9, "{c:?}/{g:?}: {o:?}"),
        }
    }
}

/// Seconds since the UNIX epoch, as `ping -D` prints them.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[test]
fn a_client_reconnects_by_itself_after_its_gateway_restarts() {
    if !strongswan_or_skip("mobike_netns", &["python3"]) {
        return;
    }
    if !roamgate_tests::have_tool("openssl", &["version"]) {
        println!("SKIP: mobike_netns restart case needs openssl");
        return;
    }
    let dir = scratch("mobike_netns_restart");
    let (gw_cfg, cl_cfg) = eap_configs(&dir);
    let lab = ScriptLab::up(
        "mob-up",
        "mob-down",
        &format!("rgm{}r", std::process::id() % 10_000),
    );
    let (cl, gw, home) = (lab.ns("cl"), lab.ns("gw"), lab.ns("home"));
    let start_gw = |name: &str| {
        DataplaneProcess::start_sub(
            Path::new(BIN.as_str()),
            "run",
            &gw,
            &gw_cfg,
            &dir,
            name,
            &["--shm", dir.join(format!("{name}.shm")).to_str().unwrap()],
        )
    };
    let first = start_gw("gw1");
    let client = DataplaneProcess::start_sub(
        Path::new(BIN.as_str()),
        "client",
        &cl,
        &cl_cfg,
        &dir,
        "cl",
        &["--shm", dir.join("cl.shm").to_str().unwrap()],
    );
    wait_for("the tunnel", 20, || pings(&home, SERVER, 1) == 1);
    wait_for("the IKE SA in the client's view", 10, || {
        !client_sas(Impl::Roamgate, &client.socket, None)
            .1
            .is_empty()
    });
    let (ike_before, _) = client_sas(Impl::Roamgate, &client.socket, None);
    // Logged in by EAP: both ends show who.
    let gv = ike_view(&first.socket);
    assert_eq!(gv["ike_sas"][0]["eap_identity"], "alice", "{gv}");
    let cv = ike_view(&client.socket);
    assert_eq!(cv["ike_sas"][0]["eap_identity"], "alice", "{cv}");
    println!("EAP-MSCHAPv2 roamgate client -> roamgate run: up=yes eap_identity=alice");

    // Traffic from behind the client all along: 10 pings a second, timestamped.
    let pinger = NsProcess::spawn(
        &home,
        &[
            "ping", "-D", "-n", "-i", "0.1", "-W", "1", "-w", "40", SERVER,
        ],
        "ping",
    );
    std::thread::sleep(Duration::from_millis(300));
    // kill -9: the gateway loses every IKE SA and CHILD_SA (its run directory goes with it).
    let (_, _, _) = first.proc.stop("KILL", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(200));
    let second = start_gw("gw2");
    // The gateway answers on its sockets: it is back.
    let back = unix_now();
    wait_for("traffic again", 20, || {
        ike_view(&client.socket)["ike_sas"][0]["established"].as_bool() == Some(true)
            && client_sas(Impl::Roamgate, &client.socket, None).0 != ike_before
            && pings(&home, SERVER, 1) == 1
    });
    // The timestamped pinger sends every 100 ms: the check's own echo may come back before
    // its next one is out, so it runs on a little before it is stopped.
    std::thread::sleep(Duration::from_millis(500));
    let (_, out, _) = pinger.stop("INT", Duration::from_secs(5));
    // The first echo reply after the gateway was back.
    let first_reply = out
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split_once(']')?.0.parse::<f64>().ok())
        .find(|t| *t > back);
    let v = ike_view(&client.socket);
    let gv = ike_view(&second.socket);
    let (_, cl_out) = client.stop_with_output();
    let _ = std::fs::write(dir.join("cl.log"), &cl_out);
    let (_, gw_out) = second.stop_with_output();
    let _ = std::fs::write(dir.join("gw2.log"), &gw_out);
    let secs = first_reply.map(|t| t - back);
    println!(
        "gateway restart (kill -9, started again): traffic again {} s after the gateway was back; client reconnects {} liveness hints {}; gateway liveness hints {}",
        secs.map_or("never".into(), |s| format!("{s:.2}")),
        v["reconnects"],
        v["liveness_hints"],
        gv["liveness_hints"]
    );
    assert!(secs.is_some(), "no echo reply after the restart:\n{out}");
    assert!(
        v["reconnects"]["peer_restarted"].as_u64() >= Some(1),
        "the client found the restart by the hint: {v}\n{cl_out}"
    );
    assert!(v["liveness_hints"]["peer_lost"].as_u64() >= Some(1), "{v}");
    assert!(
        gv["liveness_hints"]["invalid_spi_sent"].as_u64() >= Some(1),
        "{gv}\n{gw_out}"
    );
    assert!(
        cl_out.contains("IKE SA lost (peer_restarted)"),
        "the client logged why:\n{cl_out}"
    );
    assert_eq!(
        gv["ike_sas"][0]["eap_identity"], "alice",
        "logged in again: {gv}"
    );
    assert!(
        !cl_out.contains(EAP_PASSWORD) && !gw_out.contains(EAP_PASSWORD),
        "the password is never logged"
    );
}

/// The lab's EAP user and password (a lab password: never use it anywhere else).
const EAP_USER: &str = "alice";
const EAP_PASSWORD: &str = "correct horse lab";

/// The MOBIKE lab's gateway with a certificate (the test PKI) and EAP-MSCHAPv2 users from a
/// file, and its client logging in as alice by EAP: the two config files written to `dir`.
fn eap_configs(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
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
    let p = |f: &str| pki.join(f).display().to_string();
    // The users file, as an operator makes it.
    let made = std::process::Command::new(BIN.as_str())
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
    let users = dir.join("eap-users");
    std::fs::write(&users, made.stdout).unwrap();
    let creds = dir.join("home.eap");
    std::fs::write(&creds, format!("{EAP_USER}:{EAP_PASSWORD}\n")).unwrap();

    let psk = "      remote_id: rw.roamgate.test\n      psk: \"lab-psk-not-secret\"\n";
    let gw = std::fs::read_to_string(root().join("configs/mobike-gw.yaml")).unwrap();
    assert!(gw.contains(psk), "mobike-gw.yaml changed");
    let gw = gw.replace(
        psk,
        &format!(
            "      remote_id: any\n      auth: pubkey\n      cert: {}\n      key: {}\n      cacerts: [{}]\n",
            p("gw-chain.pem"),
            p("gw.key"),
            p("ca.pem")
        ),
    ) + &format!(
        "  eap:\n    connections: [rw]\n    users_file: {}\n",
        users.display()
    );
    let cl = std::fs::read_to_string(root().join("configs/mobike-client.yaml")).unwrap();
    let ids = "      local_id: rw.roamgate.test\n      remote_id: gw.roamgate.test\n      psk: \"lab-psk-not-secret\"\n";
    assert!(cl.contains(ids), "mobike-client.yaml changed");
    let cl = cl.replace(
        ids,
        &format!(
            "      local_id: {EAP_USER}\n      remote_id: gw.roamgate.test\n      auth: eap\n      eap_credentials: {}\n      cacerts: [{}]\n",
            creds.display(),
            p("ca.pem")
        ),
    );
    let (g, c) = (dir.join("gw.yaml"), dir.join("cl.yaml"));
    std::fs::write(&g, gw).unwrap();
    std::fs::write(&c, cl).unwrap();
    (g, c)
}
