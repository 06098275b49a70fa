//! Layer 3 against an independent packet library: fragments scapy makes (IPv4 `fragment`,
//! IPv6 `fragment6`) reassemble, in any order, to the packet scapy fragmented.

use std::process::Command;

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
