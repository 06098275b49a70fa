#![no_main]
//! The neighbour layer: the input is a sequence of steps `[op, len, bytes...]` on one IPv4
//! cache. op % 4 == 0: a received frame (answered in place by the responder, and what it says
//! learned); 1: a frame to send toward the address in the first 4 bytes; 2: timers; 3: a
//! lookup. Bits 2..: time step in tenths of a second. Every frame given to the cache is sent,
//! queued or counted once, and the cache stays within its limits.
use core::net::Ipv4Addr;
use libfuzzer_sys::fuzz_target;
use pipeline::neighbor::{self, frames, Action, NeighborCache, NeighborConfig, Resolution};

const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

fuzz_target!(|data: &[u8]| {
    let ours = Ipv4Addr::new(10, 1, 0, 1);
    let cfg = NeighborConfig {
        capacity: 8,
        max_queued: 12,
        ..NeighborConfig::default()
    };
    let mut c: NeighborCache<Ipv4Addr, u32> = NeighborCache::new(cfg.clone()).unwrap();
    let (mut now, mut given, mut sent) = (0u64, 0u64, 0u64);
    let mut rest = data;
    let mut n = 0u32;
    while let [op, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (bytes, next) = tail.split_at(len);
        rest = next;
        now += u64::from(op >> 2) * 100_000_000;
        n += 1;
        match op % 4 {
            0 => {
                let mut f = bytes.to_vec();
                if let Some(h) = frames::arp_hint(&f, MAC, Some(ours)) {
                    c.learn(h, now);
                }
                let (_, l) = neighbor::respond(&mut f, MAC, Some(ours), None);
                assert!(l <= f.len());
            }
            1 => {
                let a = Ipv4Addr::from(u32::from_be_bytes(
                    bytes.get(..4).and_then(|b| b.try_into().ok()).unwrap_or([10, 1, 0, 2]),
                ));
                given += 1;
                if let Resolution::Ready(..) = c.resolve(a, n, now) {
                    sent += 1;
                }
            }
            2 => c.handle_timeout(now),
            _ => {
                let _ = c.lookup(Ipv4Addr::new(10, 1, 0, bytes.first().copied().unwrap_or(2)), now);
            }
        }
        while let Some(a) = c.poll_action() {
            if let Action::Transmit { .. } = a {
                sent += 1;
            }
        }
        assert!(c.len() <= cfg.capacity);
        assert!(c.queued() <= cfg.max_queued);
        let dropped: u64 = c.counters().drops.iter().sum();
        assert_eq!(given, sent + c.queued() as u64 + dropped);
    }
});
