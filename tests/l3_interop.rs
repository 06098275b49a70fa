//! Layer 3 against an independent packet library and dissector: fragments scapy makes (IPv4
//! `fragment`, IPv6 `fragment6`) reassemble, in any order, to the packet scapy fragmented; the
//! neighbour frames roamgate sends are byte for byte what scapy builds, and tshark dissects
//! them as what they claim to be.

use core::net::{Ipv4Addr, Ipv6Addr};
use std::process::Command;

use pipeline::neighbor::frames;
use pipeline::pcap::PcapWriter;
use pipeline::reasm::{Outcome, ReasmConfig, Reassembler};
use roamgate_tests::{have_tool, scratch};

/// Each case: the packet scapy builds (without a Fragment header) and the fragments of it.
const FRAGMENT_CASES: &str = r#"
import sys
from scapy.all import (IP, UDP, IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, Raw, Ether,
                       fragment, fragment6, wrpcap)
out = sys.argv[1]
body = bytes((i * 7 + 3) & 0xff for i in range(9000))
cases = []
# IKE_AUTH-sized UDP 4500 (non-ESP marker) over IPv4, 1500-byte MTU
p = IP(src="198.51.100.7", dst="192.0.2.1", id=4242) / UDP(sport=4500, dport=4500) / Raw(b"\0\0\0\0" + body[:5000])
cases.append((p, fragment(p, fragsize=1480)))
# raw ESP over IPv4 on a 576-byte path, DF clear
p = IP(src="198.51.100.8", dst="192.0.2.1", id=7, proto=50) / Raw(body[:8000])
cases.append((p, fragment(p, fragsize=552)))
# UDP 500 over IPv6, minimum MTU
w = IPv6(src="2001:db8:7::9", dst="2001:db8::1") / UDP(sport=500, dport=500) / Raw(body[:4000])
f = IPv6(src="2001:db8:7::9", dst="2001:db8::1") / IPv6ExtHdrFragment(id=0xabcdef) / UDP(sport=500, dport=500) / Raw(body[:4000])
cases.append((w, fragment6(f, 1280)))
# ESP over IPv6 behind a Hop-by-Hop header (unfragmentable part)
w = IPv6(src="2001:db8:7::9", dst="2001:db8::1") / IPv6ExtHdrHopByHop() / Raw(body[:3000])
w[IPv6ExtHdrHopByHop].nh = 50
f = IPv6(src="2001:db8:7::9", dst="2001:db8::1") / IPv6ExtHdrHopByHop() / IPv6ExtHdrFragment(id=5, nh=50) / Raw(body[:3000])
cases.append((w, fragment6(f, 1500)))
for i, (whole, frags) in enumerate(cases):
    wrpcap(f"{out}/case{i}_whole.pcap", [Ether() / whole])
    wrpcap(f"{out}/case{i}_frags.pcap", [Ether() / x for x in frags])
print(len(cases))
"#;

fn ip_packets(path: &std::path::Path) -> Vec<Vec<u8>> {
    pipeline::pcap::read_pcap(&std::fs::read(path).unwrap())
        .unwrap()
        .into_iter()
        .map(|f| f[14..].to_vec())
        .collect()
}

#[test]
fn reassembles_what_scapy_fragments() {
    if !have_tool("python3", &["-c", "import scapy"]) {
        return;
    }
    let dir = scratch("l3-fragments");
    let out = Command::new("python3")
        .args(["-c", FRAGMENT_CASES])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert_eq!(n, 4);
    let mut r = Reassembler::new(ReasmConfig::default()).unwrap();
    for i in 0..n {
        let whole = ip_packets(&dir.join(format!("case{i}_whole.pcap"))).remove(0);
        let frags = ip_packets(&dir.join(format!("case{i}_frags.pcap")));
        assert!(frags.len() >= 3, "case {i}: {} fragments", frags.len());
        // in order, reversed, and the middle first
        let mut mid_first = frags.clone();
        mid_first.rotate_left(frags.len() / 2);
        let orders = [
            frags.clone(),
            frags.iter().rev().cloned().collect::<Vec<_>>(),
            mid_first,
        ];
        for (k, order) in orders.iter().enumerate() {
            let mut done = None;
            for (j, f) in order.iter().enumerate() {
                match r.push(f, 0) {
                    Outcome::Held if j + 1 < order.len() => {}
                    Outcome::Complete(p) if j + 1 == order.len() => done = Some(p.to_vec()),
                    o => panic!("case {i} order {k} fragment {j}: {o:?}"),
                }
            }
            assert_eq!(done.unwrap(), whole, "case {i} order {k}");
        }
    }
    assert_eq!(r.counters().reassembled, 3 * n as u64);
    assert_eq!(r.held_fragments(), 0);
}

const MAC: [u8; 6] = [0x02, 0, 0, 0, 0xaa, 0x01];
const MAC_STR: &str = "02:00:00:00:aa:01";

/// The same four frames, built by scapy, as hex lines.
const NEIGHBOR_FRAMES: &str = r#"
from scapy.all import Ether, ARP, IPv6, ICMPv6ND_NS, ICMPv6ND_NA, ICMPv6NDOptSrcLLAddr, ICMPv6NDOptDstLLAddr, raw
mac = "02:00:00:00:aa:01"
frames = [
    Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=mac, psrc="192.0.2.1", hwdst="00:00:00:00:00:00", pdst="192.0.2.2"),
    Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=mac, psrc="192.0.2.1", hwdst="00:00:00:00:00:00", pdst="192.0.2.1"),
    Ether(src=mac, dst="33:33:ff:00:00:02") / IPv6(src="2001:db8::1", dst="ff02::1:ff00:2", hlim=255) / ICMPv6ND_NS(tgt="2001:db8::2") / ICMPv6NDOptSrcLLAddr(lladdr=mac),
    Ether(src=mac, dst="33:33:00:00:00:01") / IPv6(src="2001:db8::1", dst="ff02::1", hlim=255) / ICMPv6ND_NA(tgt="2001:db8::1", R=1, S=0, O=1) / ICMPv6NDOptDstLLAddr(lladdr=mac),
]
for f in frames:
    print(raw(f).hex())
"#;

fn our_neighbor_frames() -> Vec<Vec<u8>> {
    let v4 = Ipv4Addr::new(192, 0, 2, 1);
    let v6: Ipv6Addr = "2001:db8::1".parse().unwrap();
    let mut out = vec![];
    let mut buf = [0u8; 128];
    let n = frames::arp_request(&mut buf, MAC, v4, Ipv4Addr::new(192, 0, 2, 2), None).unwrap();
    out.push(buf[..n].to_vec());
    let n = frames::gratuitous_arp(&mut buf, MAC, v4).unwrap();
    out.push(buf[..n].to_vec());
    let target: Ipv6Addr = "2001:db8::2".parse().unwrap();
    let n = frames::neighbor_solicitation(&mut buf, MAC, v6, target, None).unwrap();
    out.push(buf[..n].to_vec());
    let n = frames::unsolicited_advertisement(&mut buf, MAC, v6, true).unwrap();
    out.push(buf[..n].to_vec());
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn neighbor_frames_match_scapy_byte_for_byte() {
    if !have_tool("python3", &["-c", "import scapy"]) {
        return;
    }
    let out = Command::new("python3")
        .args(["-c", NEIGHBOR_FRAMES])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    let ours: Vec<String> = our_neighbor_frames().iter().map(|f| hex(f)).collect();
    assert_eq!(ours.len(), 4);
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(a, b, "frame {i}: ours, then scapy's");
    }
    assert_eq!(theirs.len(), 4);
}

#[test]
fn tshark_dissects_the_neighbor_frames_as_what_they_claim() {
    if !have_tool("tshark", &["--version"]) {
        return;
    }
    let dir = scratch("l3-neighbor");
    let path = dir.join("neighbor.pcap");
    let mut w = PcapWriter::new(std::fs::File::create(&path).unwrap()).unwrap();
    for (i, f) in our_neighbor_frames().iter().enumerate() {
        w.write(1_700_000_000_000_000 + i as u64, f).unwrap();
    }
    w.flush().unwrap();
    drop(w);
    let fields = [
        "arp.opcode",
        "arp.isgratuitous",
        "arp.src.proto_ipv4",
        "arp.dst.proto_ipv4",
        "ipv6.hlim",
        "icmpv6.type",
        "icmpv6.checksum.status",
        "icmpv6.nd.ns.target_address",
        "icmpv6.nd.na.target_address",
        "icmpv6.nd.na.flag.r",
        "icmpv6.nd.na.flag.s",
        "icmpv6.nd.na.flag.o",
        "icmpv6.opt.linkaddr",
        "_ws.malformed",
    ];
    let mut cmd = Command::new("tshark");
    cmd.arg("-r")
        .arg(&path)
        .args(["-T", "fields", "-E", "separator=|"]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<&str> = text.lines().collect();
    let expect = [
        // request: who has .2, tell .1; not gratuitous
        "1||192.0.2.1|192.0.2.2||||||||||".to_string(),
        // announcement: gratuitous
        "1|1|192.0.2.1|192.0.2.1||||||||||".to_string(),
        // solicitation: hop limit 255, good checksum, our link-layer address
        format!("||||255|135|1|2001:db8::2|||||{MAC_STR}|"),
        // unsolicited advertisement: R and O, not S
        format!("||||255|136|1||2001:db8::1|1|0|1|{MAC_STR}|"),
    ];
    assert_eq!(rows, expect, "tshark's view of our frames");
}
