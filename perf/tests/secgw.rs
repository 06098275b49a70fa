//! DPDK's example ipsec-secgw, the perf lab's baseline, against roamgate: the ESP it writes
//! is opened by a roamgate worker with the same SA, the ESP a roamgate worker seals is opened
//! by secgw and comes out as the original packets, and each mode runs 2 s for its packet
//! rates (printed; run with `--nocapture` to see them).
//!
//! Needs DPDK 22.11's dev files and example source (Debian libdpdk-dev, dpdk-doc), and
//! enough privilege for DPDK's runtime directory. Without them the tests print `SKIP:` and
//! pass, unless ROAMGATE_REQUIRE_TOOLS is set (as CI does). ROAMGATE_SECGW_LCORE picks
//! secgw's CPU (default 0).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use pipeline::crypto::best_backend;
use pipeline::msg::Direction;
use pipeline::pcap::{read_pcap, PcapWriter};
use pipeline::port::mem::MemFrame;
use pipeline::port::{Frame, Port};
use pipeline::traffic::{FlowSpec, Generator};
use roamgate_perf::secgw::{self, SecgwMode, SecgwOutput, SecgwResult, SecgwRun, SecgwSa};
use roamgate_perf::{lab, Bench};

/// One secgw at a time: they would share a CPU, and the rates would mean nothing.
static SERIAL: Mutex<()> = Mutex::new(());
static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// Frames per correctness run.
const N: usize = 96;

/// The binary, or None (after printing SKIP) when the tools are missing.
fn binary() -> Option<PathBuf> {
    if let Some(why) = secgw::missing_tools() {
        if std::env::var_os("ROAMGATE_REQUIRE_TOOLS").is_some() {
            panic!("{why} is required (ROAMGATE_REQUIRE_TOOLS is set)");
        }
        println!("SKIP: ipsec-secgw baseline needs {why}");
        return None;
    }
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("secgw-build");
    match BINARY.get_or_init(|| secgw::build(&out)) {
        Ok(p) => Some(p.clone()),
        Err(e) => panic!("building ipsec-secgw: {e}"),
    }
}

fn workdir(name: &str) -> PathBuf {
    let d =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("secgw-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

fn lcore() -> u32 {
    std::env::var("ROAMGATE_SECGW_LCORE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A test SA between the lab's two WAN addresses (site A sends), IPv4, raw ESP, no ESN.
/// Not the lab's keys: its own.
fn test_sa() -> SecgwSa {
    SecgwSa {
        spi: 0x5ec0_0001,
        key: [
            0x3c, 0x91, 0x0e, 0x55, 0xa7, 0x12, 0xd4, 0x68, 0x0b, 0xfe, 0x21, 0x7a, 0x99, 0x40,
            0xc3, 0x1d,
        ],
        salt: [0xa5, 0x5a, 0x0f, 0xf0],
        tunnel_src: "192.0.2.1".parse().unwrap(),
        tunnel_dst: "192.0.2.2".parse().unwrap(),
        protected_src: "10.1.0.0/24".parse().unwrap(),
        protected_dst: "10.2.0.0/24".parse().unwrap(),
    }
}

/// Site A's hosts to site B's: two flows inside the SA's selectors.
fn flows() -> Vec<FlowSpec> {
    let (cfg, _, _) = lab();
    (0..2u8)
        .map(|i| FlowSpec {
            src_mac: cfg.site_a.lan.neighbor_mac.unwrap_or_default().0,
            dst_mac: cfg.site_a.lan.mac.unwrap_or_default().0,
            src: format!("10.1.0.{}", 10 + i).parse().unwrap(),
            dst: format!("10.2.0.{}", 10 + i).parse().unwrap(),
            src_port: 40000 + u16::from(i),
            dst_port: 5001,
        })
        .collect()
}

fn plaintext(n: usize, sizes: &[usize]) -> Vec<Vec<u8>> {
    let mut gen = Generator::new(flows(), sizes);
    (0..n)
        .map(|i| {
            let mut f = MemFrame::new();
            gen.fill(&mut f, i as u64 * 1000);
            f.data().to_vec()
        })
        .collect()
}

fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
    let mut w = PcapWriter::new(std::fs::File::create(path).expect("pcap")).expect("pcap");
    for (i, f) in frames.iter().enumerate() {
        w.write(1_700_000_000_000_000 + i as u64, f).expect("pcap");
    }
    w.flush().expect("pcap");
}

/// roamgate site A (the sender of `sa`) seals `plain`; returns the ESP frames.
fn roamgate_seal(sa: &SecgwSa, plain: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let (cfg, _, _) = lab();
    let mut b = Bench::new(
        &cfg.site_a,
        &sa.roamgate_plan(Direction::Outbound),
        best_backend(),
    );
    let mut esp = Vec::new();
    for chunk in plain.chunks(32) {
        let mut q: VecDeque<MemFrame> = chunk
            .iter()
            .map(|f| MemFrame::from_bytes(f).expect("frame fits"))
            .collect();
        b.lan.tx_burst(&mut q);
        b.worker.poll(0);
        while let Some(f) = b.wan.recv() {
            esp.push(f.data().to_vec());
        }
    }
    assert_eq!(
        esp.len(),
        plain.len(),
        "roamgate sealed every frame: {:?}",
        b.worker.handle().counters.snapshot()
    );
    esp
}

/// roamgate site B (the receiver of `sa`) opens `esp`; returns the plaintext frames.
fn roamgate_open(sa: &SecgwSa, esp: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let (cfg, _, _) = lab();
    let mut b = Bench::new(
        &cfg.site_b,
        &sa.roamgate_plan(Direction::Inbound),
        best_backend(),
    );
    let mut plain = Vec::new();
    for chunk in esp.chunks(32) {
        for f in chunk {
            let sent = b.wan.send(MemFrame::from_bytes(f).expect("frame fits"));
            assert!(sent.is_ok(), "room on the cable");
        }
        b.worker.poll(0);
        while let Some(f) = b.lan.recv() {
            plain.push(f.data().to_vec());
        }
    }
    let snap = b.worker.handle().counters.snapshot();
    assert_eq!(
        plain.len(),
        esp.len(),
        "roamgate opened every frame: {snap:?}"
    );
    plain
}

fn ipv4_header_ok(ip: &[u8]) -> bool {
    let mut sum = 0u32;
    for w in ip[..20].chunks(2) {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

/// The same inner IPv4 packet: every byte of header and payload but TTL (each gateway
/// forwards it) and the header checksum, which must be valid.
fn assert_same_packet(i: usize, original: &[u8], got: &[u8]) {
    let (o, g) = (&original[14..], &got[14..]);
    assert_eq!(&got[12..14], &[0x08, 0x00], "frame {i}: IPv4");
    assert_eq!(o.len(), g.len(), "frame {i}: length");
    assert!(ipv4_header_ok(g), "frame {i}: bad IPv4 header checksum");
    assert!(
        g[8] > 0 && g[8] <= o[8],
        "frame {i}: TTL {} > {}",
        g[8],
        o[8]
    );
    assert_eq!(o[..8], g[..8], "frame {i}: IPv4 header");
    assert_eq!(o[9], g[9], "frame {i}: protocol");
    assert_eq!(o[12..], g[12..], "frame {i}: addresses and payload");
}

/// An ESP frame of `sa`: outer IPv4 between the tunnel endpoints, protocol 50, its SPI.
fn assert_esp(i: usize, sa: &SecgwSa, f: &[u8]) {
    assert_eq!(&f[12..14], &[0x08, 0x00], "ESP frame {i}: IPv4");
    let ip = &f[14..];
    assert_eq!(ip[9], 50, "ESP frame {i}: protocol 50 (raw ESP)");
    assert_eq!(ip[12..16], sa.tunnel_src.octets(), "ESP frame {i}: source");
    assert_eq!(
        ip[16..20],
        sa.tunnel_dst.octets(),
        "ESP frame {i}: destination"
    );
    assert_eq!(ip[20..24], sa.spi.to_be_bytes(), "ESP frame {i}: SPI");
}

fn correctness_run(
    bin: &Path,
    mode: SecgwMode,
    sa: &SecgwSa,
    dir: &Path,
    input: &Path,
    output: &Path,
    librte_ipsec: bool,
) -> SecgwResult {
    let (cfg, _, _) = lab();
    let r = secgw::run(&SecgwRun {
        binary: bin,
        mode,
        sa,
        input_pcap: input,
        repeat_input: false,
        output: SecgwOutput::Pcap(output),
        next_hop_mac: match mode {
            SecgwMode::Encrypt => cfg.site_b.wan.mac.unwrap_or_default().0,
            SecgwMode::Decrypt => cfg.site_b.lan.neighbor_mac.unwrap_or_default().0,
        },
        lcore: lcore(),
        librte_ipsec,
        warmup: Duration::from_millis(100),
        measure: Duration::from_millis(100),
        workdir: dir,
    })
    .unwrap_or_else(|e| panic!("secgw {mode:?} (librte_ipsec {librte_ipsec}): {e}"));
    assert_eq!(
        r.rx_packets, N as u64,
        "secgw read the input once\n{}",
        r.log
    );
    assert_eq!(
        r.tx_packets, N as u64,
        "secgw forwarded every frame\n{}",
        r.log
    );
    assert_eq!(r.errors, 0, "device errors\n{}", r.log);
    r
}

#[test]
fn secgw_encrypts_and_roamgate_opens() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(bin) = binary() else { return };
    let dir = workdir("encrypt");
    let sa = test_sa();
    let plain = plaintext(N, &[64, 594, 1420]);
    let (input, output) = (dir.join("plain.pcap"), dir.join("esp.pcap"));
    write_pcap(&input, &plain);

    // The example's legacy code path, then the librte_ipsec one (-l).
    for librte_ipsec in [false, true] {
        let _ = std::fs::remove_file(&output);
        correctness_run(
            &bin,
            SecgwMode::Encrypt,
            &sa,
            &dir,
            &input,
            &output,
            librte_ipsec,
        );
        let esp = read_pcap(&std::fs::read(&output).expect("secgw's pcap")).expect("pcap");
        assert_eq!(esp.len(), N, "frames in secgw's pcap");
        for (i, f) in esp.iter().enumerate() {
            assert_esp(i, &sa, f);
            // Sequence numbers from 1, in order.
            assert_eq!(
                f[38..42],
                (i as u32 + 1).to_be_bytes(),
                "ESP frame {i}: seq"
            );
        }
        let opened = roamgate_open(&sa, &esp);
        for (i, (o, g)) in plain.iter().zip(&opened).enumerate() {
            assert_same_packet(i, o, g);
        }
        println!(
            "secgw encrypt (librte_ipsec {librte_ipsec}) -> roamgate open: {N} frames identical"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn roamgate_seals_and_secgw_decrypts() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(bin) = binary() else { return };
    let dir = workdir("decrypt");
    let sa = test_sa();
    let plain = plaintext(N, &[64, 594, 1420]);
    let esp = roamgate_seal(&sa, &plain);
    for (i, f) in esp.iter().enumerate() {
        assert_esp(i, &sa, f);
    }
    let (input, output) = (dir.join("esp.pcap"), dir.join("plain.pcap"));
    write_pcap(&input, &esp);

    for librte_ipsec in [false, true] {
        let _ = std::fs::remove_file(&output);
        correctness_run(
            &bin,
            SecgwMode::Decrypt,
            &sa,
            &dir,
            &input,
            &output,
            librte_ipsec,
        );
        let opened = read_pcap(&std::fs::read(&output).expect("secgw's pcap")).expect("pcap");
        assert_eq!(opened.len(), N, "frames in secgw's pcap");
        for (i, (o, g)) in plain.iter().zip(&opened).enumerate() {
            assert_same_packet(i, o, g);
        }
        println!(
            "roamgate seal -> secgw decrypt (librte_ipsec {librte_ipsec}): {N} frames identical"
        );
    }

    // A corrupted ICV must not come out: secgw really checks what it opens.
    let mut bad = esp.clone();
    for f in bad.iter_mut() {
        let last = f.len() - 1;
        f[last] ^= 0x01;
    }
    let bad_in = dir.join("bad.pcap");
    write_pcap(&bad_in, &bad);
    let out2 = dir.join("bad-out.pcap");
    let r = secgw::run(&SecgwRun {
        binary: &bin,
        mode: SecgwMode::Decrypt,
        sa: &sa,
        input_pcap: &bad_in,
        repeat_input: false,
        output: SecgwOutput::Pcap(&out2),
        next_hop_mac: [2, 0, 0, 0, 0x0b, 0xfe],
        lcore: lcore(),
        librte_ipsec: false,
        warmup: Duration::from_millis(100),
        measure: Duration::from_millis(100),
        workdir: &dir,
    })
    .unwrap_or_else(|e| panic!("secgw decrypt (bad ICV): {e}"));
    assert_eq!(r.rx_packets, N as u64, "{}", r.log);
    assert_eq!(r.tx_packets, 0, "secgw forwarded frames with a bad ICV");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn secgw_rates() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(bin) = binary() else { return };
    let dir = workdir("rates");
    let sa = test_sa();
    for size in [64usize, 1420] {
        let plain = plaintext(256, &[size]);
        let plain_pcap = dir.join(format!("plain-{size}.pcap"));
        write_pcap(&plain_pcap, &plain);
        let esp_pcap = dir.join(format!("esp-{size}.pcap"));
        write_pcap(&esp_pcap, &roamgate_seal(&sa, &plain));
        for (mode, input) in [
            (SecgwMode::Encrypt, &plain_pcap),
            (SecgwMode::Decrypt, &esp_pcap),
        ] {
            let r = secgw::run(&SecgwRun {
                binary: &bin,
                mode,
                sa: &sa,
                input_pcap: input,
                repeat_input: true,
                output: SecgwOutput::Null,
                next_hop_mac: [2, 0, 0, 0, 0xbb, 1],
                lcore: lcore(),
                librte_ipsec: false,
                warmup: Duration::from_millis(500),
                measure: Duration::from_secs(2),
                workdir: &dir,
            })
            .unwrap_or_else(|e| panic!("secgw {mode:?} {size} B: {e}"));
            println!(
                "secgw {mode:?} {size} B frames: rx {:.0} pps, tx {:.0} pps, in {:.1} Mbit/s, \
                 over {:.2} s; totals rx {} tx {}, device errors {}",
                r.rx_pps,
                r.tx_pps,
                r.rx_bytes_per_s * 8e-6,
                r.secs,
                r.rx_packets,
                r.tx_packets,
                r.errors
            );
            assert!(r.rx_pps > 1000.0, "{mode:?} {size}: rx {} pps", r.rx_pps);
            // Everything received is sent: a drop in secgw would show here.
            assert!(
                r.tx_pps > 0.9 * r.rx_pps,
                "{mode:?} {size}: tx {} pps of rx {} pps",
                r.tx_pps,
                r.rx_pps
            );
            assert_eq!(r.errors, 0, "{mode:?} {size}: device errors");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
