//! Per-stage benches: parse, SA lookup, replay check, seal, open. Each stage is measured on its
//! own so a regression points at its stage.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pipeline::crypto::{self, Backend};
use pipeline::esp::replay::ReplayWindow;
use pipeline::esp::sa::{build_inbound, build_outbound};
use pipeline::esp::tunnel::{self, InnerMeta, NH_IPV4};
use pipeline::ids::Spi;
use pipeline::msg::Direction;
use pipeline::port::mem::MemFrame;
use pipeline::port::Frame;
use pipeline::sad::spi_table::SpiTable;
use pipeline::sad::Sad;
use pipeline::traffic::Generator;
use pipeline::wire::{ethernet, ipv4, udp};
use roamgate_perf::{flow_a_to_b, lab};

fn parse(c: &mut Criterion) {
    let (cfg, _, _) = lab();
    let mut gen = Generator::new(vec![flow_a_to_b(&cfg)], &[64]);
    let mut f = MemFrame::new();
    gen.fill(&mut f, 0);
    let frame = f.data().to_vec();
    let mut g = c.benchmark_group("stage");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse eth+ipv4+udp", |b| {
        b.iter(|| {
            let fr = black_box(&frame[..]);
            let eth = ethernet::Frame::new_checked(fr).ok()?;
            let ip = ipv4::Packet::new_checked(eth.payload()).ok()?;
            let ok = ip.verify_checksum();
            let u = udp::Packet::new_checked(ip.payload()).ok()?;
            Some((ok, ip.src_addr(), ip.dst_addr(), u.src_port(), u.dst_port()))
        })
    });
    g.finish();
}

fn sa_lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("stage-sa-lookup");
    g.throughput(Throughput::Elements(1));
    for n in [1usize, 1_000, 100_000, 1_000_000] {
        let mut t = SpiTable::with_capacity(n, 42);
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut spis = Vec::with_capacity(n);
        while spis.len() < n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let spi = Spi((x as u32) | 0x100);
            if t.insert(spi, spis.len() as u32)
                .expect("non-zero")
                .is_none()
            {
                spis.push(spi);
            }
        }
        let mut i = 0usize;
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                i = (i + 7919) % spis.len();
                black_box(t.get(spis[i]))
            })
        });
    }
    g.finish();
}

fn replay(c: &mut Criterion) {
    let mut g = c.benchmark_group("stage-replay");
    g.throughput(Throughput::Elements(1));
    for esn in [false, true] {
        let mut w = ReplayWindow::new(1024, esn).expect("valid size");
        let mut seq = 0u32;
        g.bench_function(
            if esn {
                "check+advance esn"
            } else {
                "check+advance"
            },
            |b| {
                b.iter(|| {
                    seq = seq.wrapping_add(1).max(1);
                    let s = w.check(black_box(seq)).expect("fresh");
                    w.advance(s).expect("fresh")
                })
            },
        );
    }
    g.finish();
}

fn seal_open(c: &mut Criterion) {
    let (cfg, plan_a, plan_b) = lab();
    let out_params = &plan_a
        .sas
        .iter()
        .find(|(d, p)| *d == Direction::Outbound && p.local.is_ipv4())
        .expect("lab has an IPv4 outbound SA")
        .1;
    let in_params = &plan_b
        .sas
        .iter()
        .find(|(d, p)| *d == Direction::Inbound && p.spi == out_params.spi)
        .expect("site B receives it")
        .1;
    let mut g = c.benchmark_group("stage-esp");
    g.throughput(Throughput::Elements(1));
    for backend in [Backend::IpsecMb, Backend::Ring, Backend::Null] {
        if !crypto::available(backend) {
            continue;
        }
        for size in [64usize, 1420] {
            let mut gen = Generator::new(vec![flow_a_to_b(&cfg)], &[size]);
            let mut f = MemFrame::new();
            gen.fill(&mut f, 0);
            let inner = f.data()[ethernet::HEADER_LEN..].to_vec();
            let meta = InnerMeta {
                next_header: NH_IPV4,
                dscp: 0,
                ecn: 0,
            };
            let mut sa = build_outbound(backend, out_params).expect("builds");
            g.bench_function(BenchmarkId::new(format!("seal-{backend}"), size), |b| {
                b.iter(|| {
                    f.set_data(&inner);
                    tunnel::encapsulate(&mut sa, &mut f, meta).expect("seals")
                })
            });
            // Open: a run of sealed packets, each opened once.
            let mut sealed = Vec::new();
            let mut sa = build_outbound(backend, out_params).expect("builds");
            for _ in 0..100_000 {
                f.set_data(&inner);
                tunnel::encapsulate(&mut sa, &mut f, meta).expect("seals");
                sealed.push(f.data()[ipv4::HEADER_LEN..].to_vec());
            }
            let mut sad = Sad::with_capacity(4, 1);
            sad.insert_inbound(build_inbound(backend, in_params).expect("builds"));
            let mut i = 0;
            g.bench_function(BenchmarkId::new(format!("open-{backend}"), size), |b| {
                b.iter(|| {
                    if i == sealed.len() {
                        sad.insert_inbound(build_inbound(backend, in_params).expect("builds"));
                        i = 0;
                    }
                    f.set_data(&sealed[i]);
                    i += 1;
                    tunnel::decapsulate(&mut sad, &mut f, pipeline::esp::sa::Encap::Bare, 1)
                        .expect("opens")
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, parse, sa_lookup, replay, seal_open);
criterion_main!(benches);
