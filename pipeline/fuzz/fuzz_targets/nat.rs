#![no_main]
//! NAT: the input is a sequence of packets `[op, len, bytes...]` fed to one masquerade.
//! op bit 0: inbound (1) or outbound (0); bit 1: after an outbound success, also feed the
//! mirrored reply inbound; bits 2..: time step. Dropped packets must come back unchanged, and
//! rewritten packets must still verify their IP header checksum.
use core::net::Ipv4Addr;
use libfuzzer_sys::fuzz_target;
use pipeline::nat::{Masquerade, MasqueradeConfig};
use pipeline::wire::{checksum, ipv4, IpProtocol};

const EXT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

/// The reply a remote would send to `out` (addresses and TCP/UDP ports swapped, ICMP echo
/// request turned into a reply), with checksums recomputed incrementally by swapping.
fn mirror(out: &[u8]) -> Option<Vec<u8>> {
    let p = ipv4::Packet::new_checked(out).ok()?;
    let (hl, proto, src, dst) = (
        usize::from(p.header_len()),
        p.next_header(),
        p.src_addr(),
        p.dst_addr(),
    );
    let mut v = out.to_vec();
    let mut m = ipv4::Packet::new_unchecked(&mut v[..]);
    m.set_src_addr(dst);
    m.set_dst_addr(src);
    let l4 = v.get_mut(hl..)?;
    match proto {
        // swapping two 16-bit words keeps every one's-complement sum
        IpProtocol::Tcp | IpProtocol::Udp if l4.len() >= 4 => {
            let (a, b) = ([l4[0], l4[1]], [l4[2], l4[3]]);
            l4[..2].copy_from_slice(&b);
            l4[2..4].copy_from_slice(&a);
        }
        IpProtocol::Icmp if l4.len() >= 4 && l4[0] == 8 => {
            l4[0] = 0;
            let ck = u16::from_be_bytes([l4[2], l4[3]]);
            l4[2..4].copy_from_slice(&checksum::update16(ck, 0x0800, 0x0000).to_be_bytes());
        }
        _ => {}
    }
    Some(v)
}

fuzz_target!(|data: &[u8]| {
    let mut nat = Masquerade::new(MasqueradeConfig {
        external_addr: EXT,
        port_range: (1024, 1087),
        max_sessions: 48,
        udp_timeout_ns: 1_000,
        tcp_transitory_timeout_ns: 2_000,
        tcp_established_timeout_ns: 10_000,
        icmp_timeout_ns: 1_000,
        port_reuse_delay_ns: 500,
    });
    let mut now = 0u64;
    let mut rest = data;
    while let [op, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (pkt, next) = tail.split_at(n);
        rest = next;
        now += u64::from(op >> 2) * 37;
        let mut buf = pkt.to_vec();
        let r = if op & 1 == 1 {
            nat.inbound(&mut buf, now)
        } else {
            nat.outbound(&mut buf, now)
        };
        match r {
            Err(_) => assert_eq!(buf, pkt, "dropped packets are unchanged"),
            Ok(()) => {
                assert!(ipv4::Packet::new_checked(&buf[..])
                    .expect("still checks")
                    .verify_checksum());
                if op & 3 == 2 {
                    if let Some(mut reply) = mirror(&buf) {
                        if nat.inbound(&mut reply, now).is_ok() {
                            let p = ipv4::Packet::new_checked(&reply[..]).expect("checks");
                            assert!(p.verify_checksum());
                        }
                    }
                }
            }
        }
        nat.expire(now, 8);
        assert!(nat.sessions() <= 48);
    }
});
