//! SA installs per second into a running data plane: a worker polls its (idle) ports on its
//! own thread while the agent prepares AddSa updates (key schedule, replay window) and sends
//! them as commands; the clock stops when the worker has acknowledged the last one. This is
//! the path every IKE-negotiated SA takes (without the shared-memory hop, which is not
//! built yet).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pipeline::agent;
use pipeline::crypto::{best_backend, AeadAlg};
use pipeline::esp::sa::{SaKeys, SaParams};
use pipeline::ids::{SaId, Spi};
use pipeline::msg::{Direction, Update};
use pipeline::port::mem::cable;
use pipeline::sad::Sad;
use pipeline::spd::Spd;
use pipeline::worker::{Link, Worker};

const BATCH: u32 = 4096;

fn params(i: u32) -> SaParams {
    let keymat: Vec<u8> = (0..20u8).map(|b| b.wrapping_add(i as u8)).collect();
    SaParams {
        id: SaId(i),
        spi: Spi(0x1000 + i),
        keys: SaKeys::from_keymat(AeadAlg::AesGcm128, &keymat).expect("key"),
        esn: true,
        replay_window: 1024,
        local: "192.0.2.1".parse().unwrap(),
        remote: "192.0.2.2".parse().unwrap(),
        encap: None,
        local_ts: "10.1.0.0/24".parse().unwrap(),
        remote_ts: "10.2.0.0/24".parse().unwrap(),
        outer_ttl: 64,
        resume: Default::default(),
        checkpoint: None,
        lifetime: Default::default(),
    }
}

fn install(c: &mut Criterion) {
    let mut g = c.benchmark_group("sa-install");
    g.throughput(Throughput::Elements(u64::from(BATCH)));
    g.sample_size(10);
    let backend = best_backend();
    g.bench_function(format!("inbound+{backend}"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (_h1, lan) = cable("h", "lan", 64);
                let (wan, _h2) = cable("wan", "n", 64);
                let (mut link, control) = agent::link(0, 8192, None);
                let l = Link {
                    mac: [2, 0, 0, 0, 0, 1],
                    neighbor: [2, 0, 0, 0, 0, 2],
                    addr4: None,
                    addr6: None,
                    mtu: 1500,
                };
                let w = Worker::new(
                    0,
                    lan,
                    wan,
                    l,
                    l,
                    Sad::with_capacity(BATCH as usize, 1),
                    Box::new(Spd::new(Vec::new()).unwrap()),
                    control,
                );
                let stop = Arc::new(AtomicBool::new(false));
                let s2 = stop.clone();
                let t = std::thread::spawn(move || {
                    w.run(None, &s2);
                });
                let start = Instant::now();
                let mut last = 0;
                for i in 0..BATCH {
                    let u = Update::AddSa {
                        dir: Direction::Inbound,
                        params: params(i),
                    };
                    last = link.send(agent::prepare(backend, &u).expect("prepare"));
                    link.pump();
                }
                link.wait_for(last, Duration::from_secs(30))
                    .expect("acknowledged");
                total += start.elapsed();
                stop.store(true, Ordering::Relaxed);
                let _ = t.join();
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, install);
criterion_main!(benches);
