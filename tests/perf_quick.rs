//! `roamgate perf --quick`, the perf lab's one-minute smoke run, as CI runs it: it must
//! measure every part (data plane per size, direction, SA count and workers; the bare AEAD;
//! latency at fractions of the NDR; ipsec-secgw when DPDK's example source is installed; SA
//! installs, rekeys under a stream and handshakes) and write the dated report with its three
//! plots. The figures of a
//! debug build on a shared CI machine mean nothing; that they are there, finite and positive
//! does.

use std::process::Command;

use roamgate_tests::scratch;

#[test]
fn perf_quick_writes_a_complete_report() {
    let out = scratch("perf_quick");
    let run = Command::new(env!("CARGO_BIN_EXE_roamgate"))
        .args(["perf", "--quick", "--out", out.to_str().unwrap()])
        .args([
            "--secgw-dir",
            roamgate_tests::root()
                .join("target/secgw")
                .to_str()
                .unwrap(),
        ])
        .output()
        .expect("roamgate perf");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "roamgate perf --quick failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let path = stdout
        .lines()
        .find_map(|l| l.strip_prefix("report: "))
        .expect("the report's path");
    let report = std::fs::read_to_string(path).expect("report");
    for section in [
        "## Machine",
        "## One core, one SA",
        "## SA count",
        "## Workers",
        "| per-core CHILD_SAs negotiated by IKE (RFC 9611; 1 and 2 CHILD_SAs), 64 B |",
        "### Software hand-off",
        "- per-core CHILD_SAs negotiated by IKE, 1420 B: ",
        "## Latency",
        "## Baseline: DPDK 22.11 ipsec-secgw",
        "## Control plane",
        "## Goals",
    ] {
        assert!(report.contains(section), "{section} missing:\n{report}");
    }
    // Every size and direction of the single-core table has a positive rate.
    for size in ["64 B", "512 B", "1420 B", "IMIX"] {
        for dir in ["encrypt", "decrypt"] {
            let row = report
                .lines()
                .find(|l| l.starts_with(&format!("| {dir} | {size} |")))
                .unwrap_or_else(|| panic!("{dir} {size} row:\n{report}"));
            let mpps: f64 = row.split('|').nth(3).unwrap().trim().parse().unwrap();
            assert!(mpps > 0.0 && mpps.is_finite(), "{row}");
        }
    }
    assert!(report.contains("| 1000 | encrypt | 64 B |"), "{report}");
    for part in [
        "### Cost model",
        "measured / predicted",
        "The machine's floor",
        "### On the same DPDK vdevs",
        "### On AF_XDP over veth",
    ] {
        assert!(report.contains(part), "{part} missing:\n{report}");
    }
    // With the DPDK port built in, roamgate's worker runs on the same vdevs as ipsec-secgw,
    // beside the floor of those ports.
    let dpdk = report
        .split("### On the same DPDK vdevs")
        .nth(1)
        .and_then(|t| t.lines().find(|l| l.starts_with("| encrypt | 64 B |")))
        .unwrap_or_else(|| panic!("DPDK 64 B row:\n{report}"));
    if cfg!(feature = "dpdk") {
        let mpps: f64 = dpdk
            .split('|')
            .nth(4)
            .unwrap()
            .trim()
            .parse()
            .unwrap_or(0.0);
        assert!(mpps > 0.0 && mpps.is_finite(), "{dpdk}");
        // The floor of the same ports (receive, seal, transmit) does less than the worker.
        let floor: f64 = dpdk
            .split('|')
            .nth(6)
            .unwrap()
            .trim()
            .parse()
            .unwrap_or(0.0);
        assert!(floor > mpps && floor.is_finite(), "{dpdk}");
    }
    assert!(report.contains("SA/s"), "{report}");
    assert!(
        report.contains("CHILD_SA rekeys in a row") && report.contains("rekeys: 0 lost: met"),
        "rekeys under a stream lose nothing:\n{report}"
    );
    let stem = std::path::Path::new(path).with_extension("");
    for svg in [
        "throughput-vs-size.svg",
        "throughput-vs-workers.svg",
        "latency-cdf.svg",
    ] {
        let s = std::fs::read_to_string(stem.join(svg)).expect(svg);
        assert!(s.contains("<svg") && s.contains("polyline"), "{svg}");
    }
}
