//! Whole-pipeline bench on in-memory ports, one core: frames enter the LAN port of a real
//! worker, are classified, looked up in the SPD, sealed into ESP and leave on the WAN port
//! (and the reverse: ESP in, opened, delivered to the LAN). In the same run: the same worker
//! with the null cipher (the pipeline's own cost), the bare AEAD seal/open of the same
//! plaintext length (the crypto ceiling), and the frame refill alone (the generator's share,
//! which a NIC would not charge).
//!
//! Read the closing figures as: pipeline(ipsec-mb) - seal-only = what the pipeline adds.

use std::collections::VecDeque;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pipeline::agent;
use pipeline::crypto::{self, AeadAlg, Backend};
use pipeline::msg::{Direction, Update};
use pipeline::port::mem::MemFrame;
use pipeline::port::{Frame, Port};
use pipeline::traffic::Generator;
use roamgate_perf::{flow_a_to_b, lab, Bench};

const BURST: usize = 32;
const SIZES: [usize; 3] = [64, 512, 1420];
/// ESP packets pre-sealed for the decrypt bench.
const RUN: usize = 2048;

fn backends() -> Vec<Backend> {
    [Backend::IpsecMb, Backend::Ring, Backend::Null]
        .into_iter()
        .filter(|b| crypto::available(*b))
        .collect()
}

/// Plaintext length ESP seals for an Ethernet frame of `frame` bytes: the inner IP packet
/// plus padding and the two trailer bytes.
fn esp_plaintext(frame: usize) -> usize {
    let inner = frame - 14;
    inner + pipeline::esp::tunnel::pad_len(inner) + 2
}

fn encrypt(c: &mut Criterion) {
    let (cfg, plan_a, _) = lab();
    let mut g = c.benchmark_group("pipeline-encrypt");
    g.throughput(Throughput::Elements(BURST as u64));
    for size in SIZES {
        // The generator's refill of a frame, alone.
        let mut gen = Generator::new(vec![flow_a_to_b(&cfg)], &[size]);
        let mut pool: Vec<MemFrame> = (0..BURST).map(|_| MemFrame::new()).collect();
        g.bench_with_input(BenchmarkId::new("refill-only", size), &size, |b, _| {
            b.iter(|| {
                for f in pool.iter_mut() {
                    gen.fill(f, 0);
                }
            })
        });
        for backend in backends() {
            let mut bench = Bench::new(&cfg.site_a, &plan_a, backend);
            let mut gen = Generator::new(vec![flow_a_to_b(&cfg)], &[size]);
            let mut q: VecDeque<MemFrame> = (0..BURST).map(|_| MemFrame::new()).collect();
            let mut out = Vec::with_capacity(BURST);
            g.bench_with_input(
                BenchmarkId::new(format!("{backend}"), size),
                &size,
                |b, _| {
                    b.iter(|| {
                        for f in q.iter_mut() {
                            gen.fill(f, 0);
                        }
                        bench.lan.tx_burst(&mut q);
                        bench.worker.poll(0);
                        bench.wan.rx_burst(&mut out, BURST);
                        assert_eq!(out.len(), BURST, "every frame was sealed");
                        q.extend(out.drain(..));
                    })
                },
            );
        }
        // The bare AEAD seal of the same plaintext, the crypto ceiling.
        let len = esp_plaintext(size);
        for backend in backends().into_iter().filter(|b| *b != Backend::Null) {
            let aead = crypto::new_aead(backend, AeadAlg::AesGcm128, &[7u8; 16]).expect("key");
            let mut buf = vec![0u8; len];
            let mut tag = [0u8; 16];
            // Written before the timed loop, as the worker writes its nonces a burst ahead:
            // ipsec-mb's masked loads of a nonce or AAD stored just before wait for the store.
            let nonces: Vec<[u8; 12]> = (0..BURST as u64)
                .map(|i| {
                    let mut nonce = [0u8; 12];
                    nonce[4..].copy_from_slice(&i.to_be_bytes());
                    nonce
                })
                .collect();
            let aad = [0u8; 12];
            g.bench_with_input(
                BenchmarkId::new(format!("seal-only-{backend}"), size),
                &size,
                |b, _| {
                    b.iter(|| {
                        for nonce in &nonces {
                            aead.seal_in_place(nonce, &aad, &mut buf, &mut tag);
                        }
                    })
                },
            );
        }
    }
    g.finish();
}

fn decrypt(c: &mut Criterion) {
    let (cfg, plan_a, plan_b) = lab();
    let mut g = c.benchmark_group("pipeline-decrypt");
    g.throughput(Throughput::Elements(BURST as u64));
    for size in SIZES {
        for backend in backends() {
            // Site B seals a long run of packets once; site A opens them in the bench.
            let mut sealer = Bench::new(&cfg.site_b, &plan_b, backend);
            let flow = pipeline::traffic::FlowSpec {
                src_mac: cfg.site_b.lan.neighbor_mac.unwrap_or_default().0,
                dst_mac: cfg.site_b.lan.mac.unwrap_or_default().0,
                src: "10.2.0.10".parse().expect("literal"),
                dst: "10.1.0.10".parse().expect("literal"),
                src_port: 40000,
                dst_port: 5001,
            };
            let mut gen = Generator::new(vec![flow], &[size]);
            // A run small enough to stay in cache: a bench of memory bandwidth is not the
            // point. Each ESP packet is opened once; when the run is used up the inbound SA is
            // reinstalled (a fresh replay window) through the control path, which costs a few
            // microseconds per RUN packets.
            let total = RUN;
            let mut esp: Vec<Vec<u8>> = Vec::with_capacity(total);
            while esp.len() < total {
                let mut q: VecDeque<MemFrame> = (0..BURST)
                    .map(|_| {
                        let mut f = MemFrame::new();
                        gen.fill(&mut f, 0);
                        f
                    })
                    .collect();
                sealer.lan.tx_burst(&mut q);
                sealer.worker.poll(0);
                let mut out = Vec::new();
                sealer.wan.rx_burst(&mut out, BURST);
                esp.extend(out.iter().map(|f| f.data().to_vec()));
            }
            let mut opener = Bench::new(&cfg.site_a, &plan_a, backend);
            let inbound = plan_a
                .sas
                .iter()
                .find(|(d, p)| *d == Direction::Inbound && p.local.is_ipv4())
                .expect("site A receives an IPv4 SA")
                .1
                .clone();
            let reinstall = Update::AddSa {
                dir: Direction::Inbound,
                params: inbound,
            };
            let mut next = 0usize;
            let mut q: VecDeque<MemFrame> = (0..BURST).map(|_| MemFrame::new()).collect();
            let mut out = Vec::with_capacity(BURST);
            g.bench_with_input(
                BenchmarkId::new(format!("{backend}"), size),
                &size,
                |b, _| {
                    b.iter(|| {
                        for f in q.iter_mut() {
                            // Each ESP packet is opened once (the replay window would refuse a
                            // second time); when the run is used up, a new opener starts over.
                            if next == esp.len() {
                                let g = opener
                                    .agent
                                    .send(agent::prepare(backend, &reinstall).expect("prepares"));
                                while opener.agent.pump() < g {
                                    opener.worker.poll(0);
                                }
                                next = 0;
                            }
                            f.set_data(&esp[next]);
                            next += 1;
                        }
                        opener.wan.tx_burst(&mut q);
                        opener.worker.poll(0);
                        opener.lan.rx_burst(&mut out, BURST);
                        q.extend(out.drain(..));
                    })
                },
            );
        }
        let len = esp_plaintext(size);
        for backend in backends().into_iter().filter(|b| *b != Backend::Null) {
            let aead = crypto::new_aead(backend, AeadAlg::AesGcm128, &[7u8; 16]).expect("key");
            let nonce = [1u8; 12];
            let mut pt = vec![0u8; len];
            let mut tag = [0u8; 16];
            aead.seal_in_place(&nonce, &[0u8; 12], &mut pt, &mut tag);
            let ct = pt.clone();
            g.bench_with_input(
                BenchmarkId::new(format!("open-only-{backend}"), size),
                &size,
                |b, _| {
                    b.iter(|| {
                        for _ in 0..BURST {
                            pt.copy_from_slice(&ct);
                            aead.open_in_place(&nonce, &[0u8; 12], &mut pt, &tag)
                                .expect("authentic");
                        }
                    })
                },
            );
        }
    }
    g.finish();
}

criterion_group!(benches, encrypt, decrypt);
criterion_main!(benches);
