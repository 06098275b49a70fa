#![no_main]
//! Reassembly: the input is a sequence of packets `[op, len_hi, len_lo, bytes...]` fed to one
//! small reassembler. op bit 0: fill in the IPv4 header checksum first (so mutations reach the
//! reassembly logic); bit 1: run `expire`; bits 2..: time step in tenths of a second. After
//! every step the counters add up, memory and datagrams stay within the limits, and a
//! completed datagram is a packet of the family it came in.
use libfuzzer_sys::fuzz_target;
use pipeline::reasm::{Outcome, ReasmConfig, Reassembler};
use pipeline::wire::ipv4;

fuzz_target!(|data: &[u8]| {
    let cfg = ReasmConfig {
        max_datagrams: 16,
        max_per_source: 4,
        max_bytes: 160 << 10,
        max_fragments: 8,
        ..ReasmConfig::default()
    };
    let mut r = Reassembler::new(cfg.clone()).expect("valid config");
    let mut now = 0u64;
    let mut rest = data;
    while let [op, hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (pkt, next) = tail.split_at(len);
        rest = next;
        now += u64::from(op >> 2) * 100_000_000;
        let mut pkt = pkt.to_vec();
        if op & 1 != 0 && pkt.len() >= 20 && pkt[0] >> 4 == 4 {
            ipv4::Packet::new_unchecked(&mut pkt[..]).fill_checksum();
        }
        let version = pkt.first().map(|b| b >> 4);
        if let Outcome::Complete(out) = r.push(&pkt, now) {
            assert_eq!(out.first().map(|b| b >> 4), version);
            match version {
                Some(4) => {
                    let p = ipv4::Packet::new_checked(&*out).expect("reassembled IPv4 checks");
                    assert!(p.verify_checksum());
                    assert!(!p.is_fragment());
                    assert_eq!(usize::from(p.total_len()), out.len());
                }
                _ => {
                    let p = pipeline::wire::ipv6::Packet::new_checked(&*out)
                        .expect("reassembled IPv6 checks");
                    assert_eq!(p.total_len(), out.len());
                }
            }
        }
        if op & 2 != 0 {
            r.expire(now, 4);
        }
        let c = r.counters();
        let dropped: u64 = c.fragment_drops.iter().sum();
        assert_eq!(
            c.fragments,
            c.reassembled_fragments + dropped + r.held_fragments() as u64
        );
        assert!(r.memory_bytes() <= cfg.max_bytes);
        assert!(r.datagrams_in_flight() <= cfg.max_datagrams);
    }
});
