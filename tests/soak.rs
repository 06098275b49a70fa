//! `roamgate perf soak`, short: the lab with IKE, three road-warrior clients, CHILD_SA rekeys
//! every second and MOBIKE roams for 20 s. Memory must not grow by more than 32 MB over the
//! second half (the hosts' frame pool that grew without bound put on 540 MB there in this
//! very run, debug build), and nothing may be lost. The rates of a debug build on a shared
//! machine are not asserted; that rekeys and roams happened is.

use std::process::Command;

use roamgate_tests::scratch;

#[test]
fn a_short_soak_stays_flat_and_loses_nothing() {
    let dir = scratch("soak");
    let json = dir.join("soak.json");
    let out = Command::new(env!("CARGO_BIN_EXE_roamgate"))
        .args([
            "perf",
            "soak",
            "--secs",
            "20",
            "--max-slope",
            "200",
            "--json",
        ])
        .arg(&json)
        .output()
        .expect("roamgate perf soak");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = match std::fs::read_to_string(&json) {
        Ok(t) => serde_json::from_str(&t).expect("the soak's JSON parses"),
        Err(e) => panic!(
            "no JSON ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        ),
    };
    let samples = report["samples"].as_array().expect("samples");
    assert!(samples.len() >= 10, "{report}");
    let growth = report["growth_mb"].as_f64().expect("growth");
    assert!(
        growth <= 32.0,
        "RSS grew {growth:.1} MB in the second half:\n{stdout}"
    );
    assert_eq!(report["lossless"], true, "{stdout}");
    for f in report["flows"].as_array().unwrap() {
        assert!(f["sent"].as_u64() > Some(1000), "{f}");
        assert_eq!(f["lost"], 0, "{f}");
    }
    let clients = report["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 3, "{report}");
    for c in clients {
        assert!(c["sent"].as_u64() > Some(1000), "{c}");
        assert_eq!(c["sent"], c["echoed"], "{c}");
    }
    let rekeys: u64 = report["gateway_rekeys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|g| g["rekeys"].as_u64())
        .sum();
    assert!(rekeys >= 10, "{report}");
    assert!(report["roams"].as_u64() >= Some(2), "{report}");
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("verdict: memory flat"), "{stdout}");
}
