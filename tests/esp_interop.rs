//! ESP made by scapy (and broken on purpose with `cryptography`'s AES-GCM and AES-CBC and
//! Python's hmac) arrives at a real roamgate worker built from configs/lab.yaml: the good
//! packets are delivered to the LAN, and each bad one is counted under its own drop reason.
//! For AES-CBC with each HMAC, with and without ESN, the other direction too: what roamgate
//! seals, scapy decrypts and authenticates, and (without ESN, which Wireshark's SA table
//! cannot express) tshark decrypts and checks every ICV.

use std::process::Command;
use std::time::Duration;

use control::config::{GatewayPlan, LabConfig};
use pipeline::crypto::{CbcAlg, EspAlg, IntegAlg};
use pipeline::esp::sa::SaKeys;
use pipeline::msg::Direction;
use pipeline::port::mem::MemFrame;
use pipeline::port::Frame;
use pipeline::stats::DropReason;
use pipeline::traffic::{parse_stamp, FlowSpec, Generator};
use proto::sa::ReplayState;
use roamgate_tests::{have_tool, lab_config, root, sas_json, scratch, TestGateway};

/// The IPv4 SA of `dir` in `plan`, as esp_check.py describes it.
fn v4_sa(plan: &GatewayPlan, dir: Direction) -> serde_json::Value {
    let sas: Vec<serde_json::Value> = serde_json::from_str(&sas_json(plan, dir)).unwrap();
    sas.into_iter()
        .find(|s| !s["src"].as_str().unwrap().contains(':'))
        .unwrap()
}

/// scapy seals `good` packets (and six broken ones) on site B's outbound IPv4 SA; site A
/// delivers the good ones and names each bad one.
fn scapy_to_roamgate(
    name: &str,
    cfg: &LabConfig,
    plan_a: &GatewayPlan,
    plan_b: &GatewayPlan,
    esn_hi: u32,
) {
    let dir = scratch(name);
    let mut sa = v4_sa(plan_b, Direction::Outbound);
    sa["esn_hi"] = esn_hi.into();
    std::fs::write(dir.join("sas.json"), format!("[{sa}]")).unwrap();
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

    let mut gw = TestGateway::new(&cfg.site_a, plan_a, pipeline::crypto::best_backend());
    for f in &frames {
        gw.inject_wan(f);
    }
    gw.run(Duration::from_millis(1));
    let delivered = gw.take_lan();
    assert_eq!(
        delivered.len(),
        good,
        "{name}: every good scapy packet reaches the LAN"
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
        assert_eq!(c.drops(r), 1, "{name}: {} counted once", r.name());
    }
    let total: u64 = DropReason::ALL.iter().map(|r| c.drops(*r)).sum();
    assert_eq!(total, 6, "{name}: no other drops");
    assert!(gw.take_wan().is_empty());
}

#[test]
fn roamgate_accepts_scapy_esp_and_names_every_bad_packet() {
    if !have_tool("python3", &["-c", "import scapy, cryptography"]) {
        return;
    }
    let (cfg, plan_a, plan_b) = lab_config();
    scapy_to_roamgate("scapy-in", &cfg, &plan_a, &plan_b, 0);
}

/// The lab's SAs with every key replaced by AES-CBC + `integ` keys (the same for both ends of
/// an SPI), ESN set to `esn`.
fn with_cbc(plan: &GatewayPlan, cipher: CbcAlg, integ: IntegAlg, esn: bool) -> GatewayPlan {
    let alg = EspAlg::Cbc(cipher, integ);
    let sas = plan
        .sas
        .iter()
        .map(|(d, p)| {
            let mut p = p.clone();
            let keymat: Vec<u8> = (0..alg.keymat_len())
                .map(|i| (i as u32).wrapping_mul(31).wrapping_add(p.spi.0) as u8)
                .collect();
            p.keys = SaKeys::from_keymat(alg, &keymat).unwrap();
            p.esn = esn;
            (*d, p)
        })
        .collect();
    GatewayPlan {
        sas,
        rules: plan.rules.clone(),
        masquerade: plan.masquerade.clone(),
        weak: Vec::new(),
    }
}

/// Every outbound SA of `plan` resumes after `seq`, every inbound one with its window's top
/// at `seq` (nothing received yet): the ESN high half is then `seq >> 32` on both sides.
fn resume_at(plan: &mut GatewayPlan, seq: u64) {
    for (d, p) in plan.sas.iter_mut() {
        match d {
            Direction::Outbound => p.resume.seq = seq,
            Direction::Inbound => {
                p.resume.replay = Some(ReplayState {
                    top: seq,
                    seen: vec![0; (p.replay_window / 64) as usize],
                })
            }
        }
    }
}

/// Site A seals `n` LAN packets on its outbound IPv4 SA; scapy decrypts and authenticates
/// each and finds roamgate's stamp inside.
fn roamgate_to_scapy(name: &str, cfg: &LabConfig, plan_a: &GatewayPlan, esn_hi: u32) {
    let dir = scratch(name);
    let mut gw = TestGateway::new(&cfg.site_a, plan_a, pipeline::crypto::best_backend());
    let flow = FlowSpec {
        src_mac: cfg.site_a.lan.neighbor_mac.unwrap_or_default().0,
        dst_mac: cfg.site_a.lan.mac.unwrap_or_default().0,
        src: "10.1.0.10".parse().unwrap(),
        dst: "10.2.0.10".parse().unwrap(),
        src_port: 40000,
        dst_port: 5001,
    };
    // Sizes that pad by 0..15 bytes to the AES block, and a full-size one.
    let mut gen = Generator::new(vec![flow], &[64, 65, 77, 100, 333, 1000, 1400]);
    let n = 70;
    for _ in 0..n {
        let mut f = MemFrame::new();
        gen.fill(&mut f, 1);
        gw.inject_lan(f.data());
    }
    gw.run(Duration::from_millis(1));
    let sent = gw.take_wan();
    assert_eq!(sent.len(), n, "{name}: every LAN packet left sealed");
    let mut pcap = pipeline::pcap::PcapWriter::new(Vec::new()).unwrap();
    for f in &sent {
        pcap.write(0, f).unwrap();
    }
    std::fs::write(dir.join("out.pcap"), pcap.into_inner()).unwrap();
    let mut sa = v4_sa(plan_a, Direction::Outbound);
    sa["esn_hi"] = esn_hi.into();
    std::fs::write(dir.join("sas.json"), format!("[{sa}]")).unwrap();
    let out = Command::new("python3")
        .arg(root().join("tests/tools/esp_check.py"))
        .arg("decrypt")
        .arg(dir.join("out.pcap"))
        .arg(dir.join("sas.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["esp"], n, "{name}: {r}");
    assert_eq!(r["decrypted"], n, "{name}: {r}");
    assert_eq!(r["stamped"], n, "{name}: {r}");
    assert_eq!(r["failed"], 0, "{name}: {r}");
    if esn_hi == 0 && !esn_of(plan_a) {
        tshark_decrypts_and_authenticates(name, &dir, plan_a, n);
    }
}

fn esn_of(plan: &GatewayPlan) -> bool {
    plan.sas.iter().any(|(_, p)| p.esn)
}

/// tshark decrypts every frame of `dir/out.pcap` to the inner flow and finds every ICV good,
/// given the SA as `pcap::esp_sa_line` writes it (Wireshark's esp_sa table has no ESN).
fn tshark_decrypts_and_authenticates(
    name: &str,
    dir: &std::path::Path,
    plan_a: &GatewayPlan,
    n: usize,
) {
    if !have_tool("tshark", &["--version"]) {
        return;
    }
    let home = dir.join("home");
    let conf = home.join(".config/wireshark");
    std::fs::create_dir_all(&conf).unwrap();
    let lines: Vec<String> = plan_a
        .sas
        .iter()
        .filter(|(d, p)| *d == Direction::Outbound && p.local.is_ipv4())
        .map(|(_, p)| pipeline::pcap::esp_sa_line(p, p.local, p.remote))
        .collect();
    std::fs::write(conf.join("esp_sa"), lines.join("\n") + "\n").unwrap();
    let out = Command::new("tshark")
        .env("HOME", &home)
        .args(["-n", "-r"])
        .arg(dir.join("out.pcap"))
        .args([
            "-o",
            "esp.enable_encryption_decode:TRUE",
            "-o",
            "esp.enable_authentication_check:TRUE",
            "-Y",
            "esp",
            "-T",
            "fields",
            "-E",
            "separator=,",
            "-e",
            "esp.icv_good",
            "-e",
            "udp.dstport",
        ])
        .output()
        .expect("tshark runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(rows.len(), n, "{name}: tshark saw every ESP frame:\n{text}");
    let decrypted = rows.iter().filter(|l| l.ends_with(",5001")).count();
    let good = rows.iter().filter(|l| l.starts_with("1,")).count();
    assert_eq!(
        (decrypted, good),
        (n, n),
        "{name}: tshark decrypted {decrypted} and found {good} good ICVs of {n}:\n{text}"
    );
}

#[test]
fn aes_cbc_with_each_hmac_interoperates_with_scapy_both_ways() {
    if !have_tool("python3", &["-c", "import scapy, cryptography"]) {
        return;
    }
    let (cfg, plan_a, plan_b) = lab_config();
    for (cipher, integ) in [
        (CbcAlg::AesCbc128, IntegAlg::HmacSha1_96),
        (CbcAlg::AesCbc256, IntegAlg::HmacSha256_128),
        (CbcAlg::AesCbc128, IntegAlg::HmacSha384_192),
        (CbcAlg::AesCbc256, IntegAlg::HmacSha512_256),
    ] {
        for esn in [false, true] {
            let name = format!("scapy-cbc-{cipher:?}-{integ:?}-esn{esn}");
            let mut a = with_cbc(&plan_a, cipher, integ, esn);
            let b = with_cbc(&plan_b, cipher, integ, esn);
            // With ESN, start in the second 2^32 block so that the high half the ICV covers
            // is not zero.
            let esn_hi = u32::from(esn);
            if esn {
                resume_at(&mut a, 1 << 32);
            }
            scapy_to_roamgate(&format!("{name}-in"), &cfg, &a, &b, esn_hi);
            roamgate_to_scapy(&format!("{name}-out"), &cfg, &a, esn_hi);
            println!("esp-interop case={name} in=ok out=ok");
        }
    }
}
