//! A control-process restart keeps the IKE SAs (issue 14 item 3): `roamgate run` as the gateway,
//! Debian's strongSwan 5.9.8 as the road warrior (vendor-scripts/netns-lab.sh rw-up), a UDP
//! stream through the tunnel, `kill -9` of the `control` process (by pid): the supervisor
//! starts a new one, which adopts the stored IKE SA (the same SPIs on both ends), and a
//! CHILD_SA rekey and an IKE SA rekey started by strongSwan are answered while the stream goes
//! on; afterwards the data plane holds exactly the SAs of the IKE SA's CHILD_SAs.
//!
//! Needs root (prints a SKIP line otherwise; CI runs it as root), strongSwan and iperf3.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use roamgate_tests::netns::{DataplaneProcess, NsProcess};
use roamgate_tests::strongswan::{
    ask, ike_view, iperf_udp, strongswan_or_skip, swanctl_conf, wait_for, Charon, ScriptLab,
};
use roamgate_tests::{root, scratch};

/// The binary under test: `ROAMGATE_BIN` (the release build `.ci/run` makes) or this build's.
static BIN: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| roamgate_tests::roamgate_bin(env!("CARGO_BIN_EXE_roamgate")));

/// The pid of the `roamgate control` child of the supervisor `run_pid`, if one runs.
fn control_pid(run_pid: u32) -> Option<u32> {
    let out = Command::new("pgrep")
        .args(["-P", &run_pid.to_string()])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .find(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| c.split(|b| *b == 0).any(|a| a == b"control"))
                .unwrap_or(false)
        })
}

/// strongSwan's established IKE SA as (initiator SPI, responder SPI), hex as it prints them.
fn strongswan_spis(charon: &Charon) -> (String, String) {
    let line = charon.ike_sa_line().expect("strongSwan has an IKE SA");
    let spi = |suffix: &str| {
        line.split_whitespace()
            .find_map(|w| w.trim_end_matches('*').strip_suffix(suffix))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no {suffix} SPI in {line}"))
    };
    (spi("_i"), spi("_r"))
}

/// The IKE SAs (our SPI) and the CHILD_SA SPIs (in, out) the gateway's control plane holds.
fn gateway_ike(socket: &Path) -> (Vec<String>, BTreeSet<(String, String)>) {
    let v = ike_view(socket);
    let mut ids = Vec::new();
    let mut children = BTreeSet::new();
    for sa in v["ike_sas"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        ids.push(sa["ike_sa"].as_str().unwrap_or("?").to_owned());
        for c in sa["children"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            children.insert((
                c["spi_in"].as_str().unwrap_or("?").to_owned(),
                c["spi_out"].as_str().unwrap_or("?").to_owned(),
            ));
        }
    }
    (ids, children)
}

/// The data plane's negotiated SAs: (inbound SPIs, outbound SPIs).
fn dataplane_sas(socket: &Path) -> (BTreeSet<String>, BTreeSet<String>) {
    let v = ask(socket, "sas");
    let (mut i, mut o) = (BTreeSet::new(), BTreeSet::new());
    for sa in v["sas"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let spi = sa["spi"].as_str().unwrap_or("?").to_owned();
        match sa["direction"].as_str() {
            Some("in") => i.insert(spi),
            _ => o.insert(spi),
        };
    }
    (i, o)
}

#[test]
fn kill_9_of_control_under_run_keeps_the_ike_sa_and_its_rekeys_are_answered() {
    if !strongswan_or_skip("ike_restart_netns", &["iperf3", "pgrep"]) {
        return;
    }
    let dir = scratch("ike_restart_netns");
    let lab = ScriptLab::up(
        "rw-up",
        "rw-down",
        &format!("rgk{}", std::process::id() % 100_000),
    );
    let cfg_path = dir.join("gw.yaml");
    std::fs::copy(root().join("configs/interop-gw.yaml"), &cfg_path).unwrap();
    let gw = DataplaneProcess::start_sub(
        Path::new(BIN.as_str()),
        "run",
        &lab.ns("gw"),
        &cfg_path,
        &dir,
        "gw",
        &["--shm", dir.join("control.shm").to_str().unwrap()],
    );
    let run_pid = gw.proc.child.as_ref().unwrap().id();
    let charon = Charon::start_with(
        &lab.ns("rw"),
        &dir.join("rw"),
        &swanctl_conf("rw-psk.swanctl.conf"),
    );
    let out = charon.swanctl(&["--initiate", "--child", "net"]);
    assert!(out.contains("initiate completed successfully"), "{out}");
    let rw = lab.ns("rw");
    assert_eq!(
        roamgate_tests::strongswan::pings(&rw, "10.9.0.10", 3),
        3,
        "ping through the tunnel"
    );
    let (spi_i, spi_r) = strongswan_spis(&charon);
    let (ids, _) = gateway_ike(&gw.socket);
    assert_eq!(
        ids,
        vec![spi_r.clone()],
        "the gateway's IKE SA is strongSwan's"
    );
    let state = dir.join("control.shm.ike-state");
    assert!(
        state.join(format!("{spi_r}.ikesa")).exists(),
        "the IKE SA is stored in {}",
        state.display()
    );

    // A UDP stream, client -> LAN host, across the restart and both rekeys.
    let _server = NsProcess::spawn(
        &lab.ns("lan"),
        &["iperf3", "-s", "-B", "10.9.0.10"],
        "iperf3 -s",
    );
    std::thread::sleep(Duration::from_millis(500));
    let stream = {
        let rw = rw.clone();
        std::thread::spawn(move || iperf_udp(&rw, "10.9.0.10", "4M", 16))
    };
    std::thread::sleep(Duration::from_secs(3));

    // kill -9 of the control process; the supervisor starts another.
    let old = control_pid(run_pid).expect("run has a control child");
    let st = Command::new("kill")
        .args(["-9", &old.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let t = Instant::now();
    wait_for("a new control process", 20, || {
        control_pid(run_pid).is_some_and(|p| p != old)
    });
    // The new control process adopted the IKE SA: same SPI, before any exchange.
    wait_for(
        "the adopted IKE SA in the new control plane's view",
        20,
        || {
            std::panic::catch_unwind(|| gateway_ike(&gw.socket).0)
                .is_ok_and(|ids| ids == vec![spi_r.clone()])
        },
    );
    println!(
        "control restarted and its IKE SA adopted in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(
        strongswan_spis(&charon),
        (spi_i.clone(), spi_r.clone()),
        "strongSwan holds the same IKE SA"
    );

    // The adopting control plane rekeys every adopted CHILD_SA itself (a crash may have cut
    // an install short); strongSwan's own rekey starts after that one is done, so that the
    // two do not collide (a collision is answered too, but one of the two rekeys then
    // stands for both and the peer's would not be counted as the peer's).
    wait_for("the adopted CHILD_SA rekeyed by the gateway", 20, || {
        ike_view(&gw.socket)["child_rekeys_by_us"].as_u64() >= Some(1)
    });

    // strongSwan rekeys the CHILD_SA, then the IKE SA: the new control plane answers both.
    let out = charon.swanctl(&["--rekey", "--child", "net"]);
    assert!(out.contains("rekey completed successfully"), "{out}");
    let out = charon.swanctl(&["--rekey", "--ike", "gw"]);
    assert!(out.contains("rekey completed successfully"), "{out}");
    // The view is rebuilt on a deadline.
    let t = Instant::now();
    loop {
        let v = ike_view(&gw.socket);
        if v["child_rekeys_by_peer"].as_u64() >= Some(1)
            && v["ike_rekeys_by_peer"].as_u64() >= Some(1)
        {
            break;
        }
        if t.elapsed() > Duration::from_secs(20) {
            let sas = charon.swanctl(&["--list-sas"]);
            let (_, out, err) = gw.proc.stop("TERM", Duration::from_secs(5));
            panic!("both rekeys not in the view: {v}\n{sas}\n{out}\n{err}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (new_i, new_r) = strongswan_spis(&charon);
    assert_ne!(
        (new_i, new_r.clone()),
        (spi_i, spi_r),
        "the IKE SA was rekeyed"
    );
    assert_eq!(
        roamgate_tests::strongswan::pings(&rw, "10.9.0.10", 3),
        3,
        "ping after the rekeys"
    );

    let (sent, lost) = stream.join().unwrap();
    println!("UDP stream across kill -9 of control and two rekeys: {sent} datagrams, {lost} lost");
    assert!(sent > 1000, "{sent}");
    assert_eq!(lost, 0, "datagrams lost across the restart and the rekeys");

    // The data plane holds exactly the SAs of the CHILD_SAs the IKE SA owns.
    wait_for("the data plane's SAs to match the IKE SA's", 15, || {
        let (ids, children) = gateway_ike(&gw.socket);
        let (dp_in, dp_out) = dataplane_sas(&gw.socket);
        let ike_in: BTreeSet<String> = children.iter().map(|c| c.0.clone()).collect();
        let ike_out: BTreeSet<String> = children.iter().map(|c| c.1.clone()).collect();
        ids == vec![new_r.clone()] && children.len() == 1 && dp_in == ike_in && dp_out == ike_out
    });
    assert!(
        state.join(format!("{new_r}.ikesa")).exists(),
        "the rekeyed IKE SA is stored"
    );
    let stored: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".ikesa"))
        .collect();
    assert_eq!(
        stored,
        vec![format!("{new_r}.ikesa")],
        "the old IKE SA's file is gone"
    );
    let (_, out, err) = gw.proc.stop("TERM", Duration::from_secs(5));
    assert!(
        err.contains("1 stored IKE SA(s), 1 adopted"),
        "the new control process says what it adopted:\n{out}\n{err}"
    );
}
