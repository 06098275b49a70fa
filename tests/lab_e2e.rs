//! `roamgate lab` end to end, through the real binary: traffic both ways with zero loss, a
//! capture of the link between the gateways that holds only ESP, and two independent
//! decryptions of that capture (tshark with the exported esp_sa keys, scapy's ESP).

use std::process::Command;

use pipeline::msg::Direction;
use pipeline::pcap::read_pcap;
use roamgate_tests::{have_tool, lab_config, sas_json, scratch};

fn run_lab(dir: &std::path::Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_roamgate"))
        .args([
            "lab",
            "--duration",
            "3",
            "--rate-pps",
            "5000",
            "--pcap-limit",
            "4000",
        ])
        .arg("--pcap")
        .arg(dir.join("wan.pcap"))
        .arg("--wireshark-keys")
        .arg(dir.join("esp_sa"))
        .output()
        .expect("roamgate runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "roamgate lab failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("WARNING") && stderr.contains("Lab only"),
        "the key export warns: {stderr}"
    );
    assert!(
        stdout.contains("the static SAs use 32-bit sequence numbers (no ESN)"),
        "the key export turns ESN off and says so: {stdout}"
    );
    stdout
}

/// Ethertype + protocol of a captured frame: ESP is IP proto 50 or UDP to/from 4500.
fn is_esp(frame: &[u8]) -> bool {
    match frame.get(12..14) {
        Some([0x08, 0x00]) => match frame.get(23) {
            Some(50) => true,
            Some(17) => {
                let ihl = usize::from(frame.get(14).map_or(0, |b| b & 0x0f)) * 4;
                let dport = frame.get(14 + ihl + 2..14 + ihl + 4);
                dport == Some(&[0x11, 0x94][..])
            }
            _ => false,
        },
        Some([0x86, 0xdd]) => match frame.get(20) {
            Some(50) => true,
            Some(17) => frame.get(54 + 2..54 + 4) == Some(&[0x11, 0x94][..]),
            _ => false,
        },
        _ => false,
    }
}

#[test]
fn lab_carries_traffic_both_ways_and_only_esp_crosses_the_link() {
    let dir = scratch("lab");
    let stdout = run_lab(&dir);
    println!("{stdout}");
    // Live lines, then the summary with no loss at either site.
    assert!(
        stdout.contains("[   1s]"),
        "a live line each second:\n{stdout}"
    );
    assert!(stdout.contains("summary after"), "{stdout}");
    let hosts: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("hosts site-"))
        .collect();
    assert_eq!(hosts.len(), 2, "{stdout}");
    for l in &hosts {
        assert!(l.contains(", lost 0,"), "no loss: {l}");
        assert!(!l.contains("delivered 0,"), "traffic flowed: {l}");
    }

    let frames = read_pcap(&std::fs::read(dir.join("wan.pcap")).unwrap()).unwrap();
    assert!(frames.len() > 1000, "captured {} frames", frames.len());
    let clear = frames.iter().filter(|f| !is_esp(f)).count();
    assert_eq!(clear, 0, "only ESP crosses the link between the gateways");
    // Both tunnels: ESP in IPv4, and ESP in UDP in IPv6.
    assert!(frames
        .iter()
        .any(|f| f.get(12..14) == Some(&[0x08, 0x00][..])));
    assert!(frames
        .iter()
        .any(|f| f.get(12..14) == Some(&[0x86, 0xdd][..])));
}

#[test]
fn tshark_and_scapy_decrypt_what_roamgate_sealed() {
    let dir = scratch("lab-decrypt");
    run_lab(&dir);
    let pcap = dir.join("wan.pcap");
    let esp_count = read_pcap(&std::fs::read(&pcap).unwrap()).unwrap().len();

    if have_tool("tshark", &["--version"]) {
        // tshark reads the esp_sa UAT from its personal config directory.
        let home = dir.join("home");
        let conf = home.join(".config/wireshark");
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::copy(dir.join("esp_sa"), conf.join("esp_sa")).unwrap();
        let out = Command::new("tshark")
            .env("HOME", &home)
            .args(["-n", "-r"])
            .arg(&pcap)
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
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), esp_count, "tshark saw every ESP frame");
        // The last udp.dstport is the inner packet's (the outer one is 4500 on the UDP-encap SA).
        let decrypted = lines.iter().filter(|l| l.ends_with(",5001")).count();
        assert_eq!(
            decrypted, esp_count,
            "tshark decrypted {decrypted} of {esp_count} ESP frames to the inner UDP flows"
        );
        let good = lines.iter().filter(|l| l.starts_with("1,")).count();
        assert_eq!(
            good,
            esp_count,
            "tshark found {good} of {esp_count} ICVs good (esp.icv_good): {:?}",
            lines.iter().find(|l| !l.starts_with("1,"))
        );
    }

    if have_tool("python3", &["-c", "import scapy, cryptography"]) {
        let (_, a, b) = lab_config();
        // Every outbound SA of both gateways: what crossed the link.
        let mut sas: Vec<serde_json::Value> =
            serde_json::from_str(&sas_json(&a, Direction::Outbound)).unwrap();
        sas.extend(
            serde_json::from_str::<Vec<serde_json::Value>>(&sas_json(&b, Direction::Outbound))
                .unwrap(),
        );
        // The exported run's SAs use 32-bit sequence numbers (the run says so, see run_lab).
        for sa in sas.iter_mut() {
            sa["esn"] = false.into();
        }
        std::fs::write(dir.join("sas.json"), serde_json::to_string(&sas).unwrap()).unwrap();
        let out = Command::new("python3")
            .arg(roamgate_tests::root().join("tests/tools/esp_check.py"))
            .arg("decrypt")
            .arg(&pcap)
            .arg(dir.join("sas.json"))
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(r["esp"], esp_count, "{r}");
        assert_eq!(r["decrypted"], esp_count, "{r}");
        assert_eq!(r["stamped"], esp_count, "{r}");
        assert_eq!(r["failed"], 0, "{r}");
    }
}

#[test]
fn lab_negotiates_with_ike_and_rekeys_under_traffic_without_loss() {
    let out = Command::new(env!("CARGO_BIN_EXE_roamgate"))
        .args([
            "lab",
            "--ike",
            "--rekey-secs",
            "1",
            "--duration",
            "4",
            "--rate-pps",
            "50000",
        ])
        .output()
        .expect("run roamgate lab --ike");
    // The lab's own lines on stdout, the IKE events as log lines on stderr.
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "roamgate lab --ike failed (it exits non-zero on any loss):\n{text}"
    );
    assert!(text.contains("both tunnels negotiated"), "{text}");
    let ups = text.matches("rekeyed by us").count();
    let downs = text.matches("CHILD_SA down").count();
    assert!(
        ups >= 4,
        "CHILD_SAs were rekeyed while traffic flowed:\n{text}"
    );
    // Simultaneous rekeys (both sites rekey on the same timer) leave one CHILD_SA per
    // tunnel and site, and one per road-warrior client at site B: every rekey's old (or
    // redundant) SA went down. (The clients themselves log quietly.)
    let all_ups = text
        .lines()
        .filter(|l| l.contains(" ike: CHILD_SA ") && l.contains(" up: "))
        .count();
    assert_eq!(
        all_ups - downs,
        4 + 3,
        "two tunnels x two sites and three clients remain:\n{text}"
    );
    let hosts: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("hosts site-"))
        .collect();
    assert_eq!(hosts.len(), 2, "both directions are reported:\n{text}");
    for line in hosts {
        assert!(line.contains(" lost 0,"), "{line}");
        assert!(line.contains("longest gap between arrivals"), "{line}");
    }
    // The live line says what it measured.
    assert!(!text.contains("never paused"), "{text}");
    assert!(
        text.contains("longest gap between arrivals in this second: site-a -> site-b "),
        "{text}"
    );
    // The three road warriors got virtual IPs from site B's pool, streamed through their
    // tunnels and rekeyed, and every packet came back.
    let clients: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("client-") && l.contains("(virtual IP "))
        .collect();
    assert_eq!(clients.len(), 3, "{text}");
    let mut vips: Vec<&str> = clients
        .iter()
        .filter_map(|l| l.split("(virtual IP ").nth(1)?.split(')').next())
        .collect();
    vips.sort();
    vips.dedup();
    assert_eq!(vips.len(), 3, "three distinct virtual IPs: {clients:?}");
    assert!(vips.iter().all(|v| v.starts_with("10.99.0.")), "{vips:?}");
    for line in &clients {
        assert!(line.contains(", lost 0,"), "{line}");
        let rekeys: u64 = line
            .split(", lost 0, ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(rekeys >= 1, "{line}");
        let sent: u64 = line
            .split("sent ")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(sent > 2000, "{line}");
    }
    assert!(text.contains("clients: 3/3 up with virtual IPs"), "{text}");
    // client-0 roamed between two addresses (MOBIKE) mid-stream and lost nothing (above).
    let roams: u64 = clients
        .iter()
        .find(|l| l.trim_start().starts_with("client-0"))
        .and_then(|l| l.split(" rekeys, ").nth(1)?.split(' ').next()?.parse().ok())
        .unwrap_or(0);
    assert!(roams >= 1, "client-0 roamed: {clients:?}");
    assert!(text.contains("moved (MOBIKE)"), "site B followed: {text}");
}

/// `lab --metrics 127.0.0.1:0`: while the lab runs, GET /metrics answers with both gateways'
/// counters, which an independent parser reads and which grow between two scrapes.
#[test]
fn lab_serves_prometheus_metrics_of_both_gateways() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::process::Stdio;

    let mut child = Command::new(env!("CARGO_BIN_EXE_roamgate"))
        .args(["lab", "--duration", "4", "--rate-pps", "2000"])
        .args(["--metrics", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("roamgate runs");
    // The address it bound, from its "metrics: http://ADDR/metrics" line.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut addr = None;
    let mut line = String::new();
    while addr.is_none() && stderr.read_line(&mut line).unwrap_or(0) > 0 {
        addr = line
            .trim()
            .split_once("metrics: http://")
            .and_then(|(_, r)| r.strip_suffix("/metrics"))
            .map(str::to_owned);
        line.clear();
    }
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    let addr = addr.expect("the lab says where its metrics are");
    let scrape = || {
        let mut c = std::net::TcpStream::connect(&addr).expect("connect");
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        c.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let parsed = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
            .expect("the metrics parse");
        let encrypted = |gw: &str| {
            parsed
                .samples
                .iter()
                .filter(|s| {
                    s.metric == "roamgate_traffic_packets_total"
                        && s.labels.get("event") == Some("encrypted")
                        && s.labels.get("gateway") == Some(gw)
                })
                .map(|s| match s.value {
                    prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
                    _ => f64::NAN,
                })
                .sum::<f64>()
        };
        [encrypted("site-a"), encrypted("site-b")]
    };
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let first = scrape();
    std::thread::sleep(std::time::Duration::from_millis(1000));
    let second = scrape();
    let status = child.wait().unwrap();
    assert!(status.success());
    for i in 0..2 {
        assert!(
            second[i] > first[i] && first[i] > 0.0,
            "gateway {i}: {first:?} then {second:?}"
        );
    }
}

/// One value of a parsed scrape: the sample of `metric` whose labels include all of `want`.
fn sample(parsed: &prometheus_parse::Scrape, metric: &str, want: &[(&str, &str)]) -> Option<f64> {
    parsed
        .samples
        .iter()
        .find(|s| s.metric == metric && want.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

/// `lab --ike --metrics`: once the lab says both tunnels and the three road warriors are up,
/// a scrape parsed by an independent reader counts exactly those handshakes at each site
/// (site A initiated the two tunnels; site B answered them and the clients), none failed,
/// as many IKE SAs established (rekeys replace, never add), none half-open; CHILD_SA rekeys
/// (every second) and client-0's MOBIKE roam are counted at site B.
#[test]
fn lab_ike_metrics_count_the_handshakes_the_lab_reports() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::process::Stdio;
    use std::sync::{Arc, Mutex};

    let mut child = Command::new(env!("CARGO_BIN_EXE_roamgate"))
        .args(["lab", "--ike", "--duration", "6", "--rekey-secs", "1"])
        .args(["--roam-secs", "1", "--rate-pps", "5000"])
        .args(["--metrics", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("roamgate runs");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut addr = None;
    let mut line = String::new();
    while addr.is_none() && stderr.read_line(&mut line).unwrap_or(0) > 0 {
        addr = line
            .trim()
            .split_once("metrics: http://")
            .and_then(|(_, r)| r.strip_suffix("/metrics"))
            .map(str::to_owned);
        line.clear();
    }
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    let addr = addr.expect("the lab says where its metrics are");
    let stdout = Arc::new(Mutex::new(String::new()));
    {
        let stdout = stdout.clone();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            let mut l = String::new();
            while out.read_line(&mut l).unwrap_or(0) > 0 {
                stdout.lock().unwrap().push_str(&l);
                l.clear();
            }
        });
    }
    // What the lab itself reports: the tunnels negotiated, then a live line with the clients.
    let t = std::time::Instant::now();
    let (tunnels, clients) = loop {
        let text = stdout.lock().unwrap().clone();
        let tunnels = text.contains("both tunnels negotiated").then_some(2.0);
        let clients = text
            .lines()
            .filter_map(|l| {
                l.split("clients: ")
                    .nth(1)?
                    .split('/')
                    .next()?
                    .parse::<f64>()
                    .ok()
            })
            .next_back();
        if let (Some(t), Some(c)) = (tunnels, clients.filter(|c| *c == 3.0)) {
            break (t, c);
        }
        assert!(t.elapsed().as_secs() < 5, "the lab never said so:\n{text}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    // Past the view's rebuild pause, and past a rekey and a roam.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let mut c = std::net::TcpStream::connect(&addr).expect("connect");
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    let (_, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let parsed = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .expect("the metrics parse");
    let status = child.wait().unwrap();
    assert!(status.success(), "{}", stdout.lock().unwrap());

    for (gw, handshakes) in [("site-a", tunnels), ("site-b", tunnels + clients)] {
        let g = [("gateway", gw)];
        let v = |m: &str| sample(&parsed, m, &g).unwrap_or_else(|| panic!("{gw} {m}:\n{body}"));
        assert_eq!(
            v("roamgate_ike_handshakes_completed_total"),
            handshakes,
            "{gw}"
        );
        assert_eq!(
            v("roamgate_ike_handshakes_started_total"),
            handshakes,
            "{gw}"
        );
        assert_eq!(v("roamgate_ike_handshakes_failed_total"), 0.0, "{gw}");
        assert_eq!(v("roamgate_ike_half_open"), 0.0, "{gw}");
        let established = [("gateway", gw), ("state", "established")];
        assert_eq!(
            sample(&parsed, "roamgate_ike_sas", &established),
            Some(handshakes),
            "{gw}"
        );
    }
    let b = |m: &str, l: &[(&str, &str)]| {
        let mut want = vec![("gateway", "site-b")];
        want.extend_from_slice(l);
        sample(&parsed, m, &want).unwrap_or(0.0)
    };
    assert!(
        b(
            "roamgate_ike_rekeys_total",
            &[("kind", "child"), ("initiator", "us")]
        ) >= 1.0
    );
    assert!(b("roamgate_ike_mobike_updates_total", &[]) >= 1.0, "{body}");
}

/// Every form in which a secret could show up in a line: hex either case, every 8-byte window
/// of it in hex, and the byte list `Debug` prints for a `Vec<u8>`.
fn secret_forms(bytes: &[u8]) -> Vec<String> {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut forms = vec![hex.clone(), hex.to_uppercase()];
    for w in bytes.windows(8) {
        let h: String = w.iter().map(|b| format!("{b:02x}")).collect();
        forms.push(h.to_uppercase());
        forms.push(h);
        let list: Vec<String> = w.iter().map(u8::to_string).collect();
        forms.push(format!("[{}", list.join(", ")));
        forms.push(list.join(", "));
    }
    forms
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

/// Nothing secret at any log level, in either format: the lab negotiates its tunnels and three
/// road warriors' with IKE and rekeys them every second, logging at trace level; no line of
/// its output (stderr and stdout) holds the run's PSK or any SA key its `--wireshark-keys`
/// export lists (every negotiated SA, as installed), in any of the forms above.
#[test]
fn no_log_line_at_any_level_holds_the_psk_or_a_key() {
    for format in ["human", "json"] {
        let dir = scratch(&format!("log-secrets-{format}"));
        let keys = dir.join("esp_sa");
        let out = Command::new(env!("CARGO_BIN_EXE_roamgate"))
            .args(["--log-level", "trace", "--log-format", format])
            .args(["lab", "--ike", "--rekey-secs", "1", "--duration", "3"])
            .args(["--rate-pps", "5000", "--wireshark-keys"])
            .arg(&keys)
            .output()
            .expect("roamgate runs");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{stdout}\n{stderr}");
        let export = std::fs::read_to_string(&keys).expect("the key export");

        let psk = export
            .lines()
            .next()
            .and_then(|l| l.split("the IKE PSK of this run is ").nth(1))
            .expect("the PSK line")
            .trim()
            .to_owned();
        // The PSK is used as its text; its hex digits are also read as bytes, in case
        // something decoded it.
        let mut secrets: Vec<(String, Vec<u8>)> = vec![
            ("PSK".into(), psk.as_bytes().to_vec()),
            ("PSK decoded".into(), unhex(&psk)),
        ];
        for line in export.lines().skip(1) {
            let fields: Vec<&str> = line.split(',').map(|f| f.trim_matches('"')).collect();
            let (spi, key) = (fields[3], fields[5].trim_start_matches("0x"));
            secrets.push((format!("key of SPI {spi}"), unhex(key)));
        }
        // Two tunnels and three clients, both directions' outbound SAs, rekeyed: many keys.
        assert!(secrets.len() > 2 + 10, "{export}");
        for (what, bytes) in &secrets {
            assert!(bytes.len() >= 20, "{what}: {bytes:?}");
            for form in secret_forms(bytes) {
                for (stream, text) in [("stderr", &stderr), ("stdout", &stdout)] {
                    if let Some(l) = text.lines().find(|l| l.contains(&form)) {
                        panic!("{what} ({form}) in a line of {stream}: {l}");
                    }
                }
            }
        }
        // The keys were read whole: each one's hex is back in the export as written.
        for (what, bytes) in secrets.iter().skip(2) {
            let hex = &secret_forms(bytes)[0];
            assert!(export.contains(hex.as_str()), "{what}: {hex}");
        }

        // Every level had something to say, and the format is the one asked for.
        for level in ["TRACE", "DEBUG", "INFO"] {
            assert!(stderr.contains(level), "no {level} line:\n{stderr}");
        }
        let log_lines: Vec<&str> = stderr.lines().filter(|l| !l.is_empty()).collect();
        if format == "json" {
            for l in &log_lines {
                let v: serde_json::Value =
                    serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
                assert!(v["timestamp"].is_string() && v["target"].is_string(), "{l}");
            }
        } else {
            // A UTC timestamp, then the level and the target.
            assert!(
                log_lines
                    .iter()
                    .any(|l| l.contains("Z  INFO ike: CHILD_SA ") && l.starts_with("20")),
                "{stderr}"
            );
        }
    }
}
