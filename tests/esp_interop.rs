//! ESP made by scapy (and broken on purpose with `cryptography`'s AES-GCM) arrives at a real
//! roamgate worker built from configs/lab.yaml: the good packets are delivered to the LAN,
//! and each bad one is counted under its own drop reason.

use std::process::Command;
use std::time::Duration;

use pipeline::msg::Direction;
use pipeline::stats::DropReason;
use pipeline::traffic::parse_stamp;
use roamgate_tests::{have_tool, lab_config, root, sas_json, scratch, TestGateway};

#[test]
fn roamgate_accepts_scapy_esp_and_names_every_bad_packet() {
    if !have_tool("python3", &["-c", "import scapy, cryptography"]) {
        return;
    }
    let dir = scratch("scapy-in");
    let (cfg, plan_a, plan_b) = lab_config();
    // Site B's outbound IPv4 SA is what site A receives.
    let sas: Vec<serde_json::Value> =
        serde_json::from_str(&sas_json(&plan_b, Direction::Outbound)).unwrap();
    let v4 = sas
        .iter()
        .find(|s| !s["src"].as_str().unwrap().contains(':'))
        .unwrap();
    std::fs::write(dir.join("sas.json"), format!("[{v4}]")).unwrap();
    let good = 200;
    let spec = serde_json::json!({
        "src_mac": cfg.site_a.wan.neighbor_mac.unwrap_or_default().to_string(),
        "dst_mac": cfg.site_a.wan.mac.unwrap_or_default().to_string(),
        "inner_src": "10.2.0.10",
        "inner_dst": "10.1.0.10",
        "good": good,
    });
    std::fs::write(dir.join("spec.json"), spec.to_string()).unwrap();
    let out = Command::new("python3")
        .arg(root().join("tests/tools/esp_check.py"))
        .arg("encrypt")
        .arg(dir.join("in.pcap"))
        .arg(dir.join("sas.json"))
        .arg(dir.join("spec.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let frames = pipeline::pcap::read_pcap(&std::fs::read(dir.join("in.pcap")).unwrap()).unwrap();
    assert_eq!(frames.len(), good + 6);

    let mut gw = TestGateway::new(&cfg.site_a, &plan_a, pipeline::crypto::best_backend());
    for f in &frames {
        gw.inject_wan(f);
    }
    gw.run(Duration::from_millis(1));
    let delivered = gw.take_lan();
    assert_eq!(
        delivered.len(),
        good,
        "every good scapy packet reaches the LAN"
    );
    for (i, f) in delivered.iter().enumerate() {
        let (_, seq, _) = parse_stamp(f).expect("inner packet intact");
        assert_eq!(seq, i as u64);
        // Forwarded to site A's LAN neighbour, from site A's LAN MAC, TTL decremented.
        assert_eq!(&f[0..6], &cfg.site_a.lan.neighbor_mac.unwrap_or_default().0);
        assert_eq!(&f[6..12], &cfg.site_a.lan.mac.unwrap_or_default().0);
        assert_eq!(f[14 + 8], 63);
    }
    let c = gw.worker.handle().counters;
    for r in [
        DropReason::ReplayDuplicate,
        DropReason::EspTruncated,
        DropReason::AuthFailed,
        DropReason::BadPadding,
        DropReason::UnknownSpi,
        DropReason::TfcDummy,
    ] {
        assert_eq!(c.drops(r), 1, "{} counted once", r.name());
    }
    let total: u64 = DropReason::ALL.iter().map(|r| c.drops(*r)).sum();
    assert_eq!(total, 6, "no other drops");
    assert!(gw.take_wan().is_empty());
}
