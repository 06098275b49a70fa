//! What the software hand-off between workers costs per packet (`roamgate perf handoff`):
//! one outbound SA owned by worker 1 of two; LAN frames fed to worker 1 itself (direct) or to
//! worker 0, which hands them over (`pipeline::handoff`). Both workers are polled on one
//! thread, so this is the CPU cost of the copy and the lane (sender and receiver), not the
//! cross-core cache transfer a real pair of cores adds.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use pipeline::crypto::Backend;
use pipeline::msg::{Direction, Update};
use pipeline::port::mem::MemFrame;
use pipeline::port::Port;
use pipeline::worker::BURST;

use crate::run::{host, plain_frame, sa_params, Rig};

/// Worker time per packet, ns.
#[derive(Clone, Copy, Debug)]
pub struct HandoffCost {
    /// The owner alone, frames on its own port.
    pub direct_ns: f64,
    /// Worker 0 (receives, hands over) and worker 1 (takes over, seals) together.
    pub via_ns: f64,
    /// Worker 0's part of `via_ns`.
    pub sender_ns: f64,
    pub packets: u64,
}

fn settle(r: &mut Rig, generation: u64) {
    while r.link.pump() < generation {
        r.worker.poll(0);
    }
}

/// Two workers joined by the hand-off, worker 1 owning outbound SA 0 (bound to `host(0)` on
/// both, as the control plane sends bindings to every worker).
fn pair(backend: Backend) -> (Rig, Rig) {
    let mut ends = pipeline::handoff::mesh(2, pipeline::handoff::LANE_SLOTS, 64).into_iter();
    let (mut r0, mut r1) = (Rig::empty(0, 1), Rig::empty(1, 1));
    for r in [&mut r0, &mut r1] {
        r.worker.set_handoff(ends.next().expect("two ends"));
    }
    let p = sa_params(0);
    let bind = Update::BindHost {
        dst: host(0).into(),
        src: "10.1.0.0/24".parse().expect("literal"),
        sa: p.id,
    };
    let add = Update::AddSa {
        dir: Direction::Outbound,
        params: p,
    };
    let g = r1
        .link
        .send(pipeline::agent::prepare(backend, &add).expect("SA builds"));
    settle(&mut r1, g);
    for r in [&mut r0, &mut r1] {
        let g = r
            .link
            .send(pipeline::agent::prepare(backend, &bind).expect("binding"));
        settle(r, g);
    }
    (r0, r1)
}

/// `n` frames of `size` through the pair, fed to worker `entry`; (worker time of worker 0,
/// of worker 1, frames out).
fn run(
    r0: &mut Rig,
    r1: &mut Rig,
    entry: usize,
    frame: &[u8],
    n: u64,
) -> (Duration, Duration, u64) {
    let (mut sent, mut got) = (0u64, 0u64);
    let (mut t0, mut t1) = (Duration::ZERO, Duration::ZERO);
    let mut out = Vec::with_capacity(BURST * 2);
    let mut idle = 0;
    while got < n && idle < 10_000 {
        let mut burst: VecDeque<MemFrame> = VecDeque::new();
        while sent < n && burst.len() < BURST {
            let mut f = MemFrame::new();
            f.set_data(frame);
            burst.push_back(f);
            sent += 1;
        }
        let feed = if entry == 0 { &mut r0.lan } else { &mut r1.lan };
        feed.tx_burst(&mut burst);
        let t = Instant::now();
        let w0 = r0.worker.poll(0);
        t0 += t.elapsed();
        let t = Instant::now();
        let w1 = r1.worker.poll(0);
        t1 += t.elapsed();
        out.clear();
        let k = r1.wan.rx_burst(&mut out, BURST * 2);
        got += k as u64;
        idle = if w0 + w1 + k == 0 { idle + 1 } else { 0 };
    }
    (t0, t1, got)
}

/// Medians over `runs` interleaved runs of `n` packets of `size` bytes each way.
pub fn handoff_cost(
    size: usize,
    n: u64,
    runs: usize,
    backend: Backend,
) -> Result<HandoffCost, String> {
    let (mut r0, mut r1) = pair(backend);
    let frame = plain_frame(size, Ipv4Addr::new(10, 1, 0, 10), host(0));
    // Warm-up, untimed.
    run(&mut r0, &mut r1, 1, &frame, n / 10 + 1);
    run(&mut r0, &mut r1, 0, &frame, n / 10 + 1);
    let (mut direct, mut via, mut sender) = (Vec::new(), Vec::new(), Vec::new());
    let per = |d: Duration| d.as_nanos() as f64 / n.max(1) as f64;
    for _ in 0..runs.max(1) {
        // Worker 0 idles meanwhile: only the owner's time counts.
        let (_, a1, got) = run(&mut r0, &mut r1, 1, &frame, n);
        if got != n {
            return Err(format!("direct: {} of {n} frames came out", got));
        }
        direct.push(per(a1));
        let (b0, b1, got) = run(&mut r0, &mut r1, 0, &frame, n);
        if got != n {
            return Err(format!("handed over: {} of {n} frames came out", got));
        }
        via.push(per(b0 + b1));
        sender.push(per(b0));
    }
    Ok(HandoffCost {
        direct_ns: crate::median(&mut direct),
        via_ns: crate::median(&mut via),
        sender_ns: crate::median(&mut sender),
        packets: n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_frame_comes_out_either_way() {
        // ROAMGATE_HANDOFF_PACKETS=200000 (with --release --nocapture): a quick figure
        // without building the whole binary.
        let n = std::env::var("ROAMGATE_HANDOFF_PACKETS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2000);
        for size in [64, 1420] {
            let c = handoff_cost(size, n, 3, pipeline::crypto::best_backend()).unwrap();
            assert_eq!(c.packets, n);
            assert!(c.direct_ns > 0.0 && c.via_ns > 0.0 && c.sender_ns > 0.0);
            println!(
                "{size} B: direct {:.1} ns/pkt, handed over {:.1} ns/pkt (sender {:.1}), ratio {:.2}",
                c.direct_ns,
                c.via_ns,
                c.sender_ns,
                c.direct_ns / c.via_ns
            );
        }
    }
}
