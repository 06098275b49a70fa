//! The shared-memory ring and the record codec, one thread:
//! - push + pop of a 256-byte record (one 264-byte slot record) through a ring, with and without
//!   the consumer's zeroization (update rings zeroize, the others do not), copying out and
//!   reading in place;
//! - encode + decode of an `AddSa` update (AES-128-GCM, IPv4), alone and through an update
//!   ring with `Sender`/`Receiver`.
//!
//! `cargo bench -p roamgate-pipeline --bench shm -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pipeline::crypto::AeadAlg;
use pipeline::esp::sa::{SaKeys, SaParams};
use pipeline::ids::{SaId, Spi};
use pipeline::msg::{Direction, Update, UpdateEnvelope};
use pipeline::shm::{ChannelSizes, ControlChannel, Region, RingKind, RingSpec};
use proto::codec::Record;

fn path(name: &str) -> PathBuf {
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let p = dir.join(format!("roamgate-bench-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

fn add_sa() -> UpdateEnvelope {
    let a = |x| IpAddr::V4(Ipv4Addr::new(192, 0, 2, x));
    UpdateEnvelope {
        generation: 42,
        update: Update::AddSa {
            dir: Direction::Outbound,
            params: SaParams {
                id: SaId(7),
                spi: Spi(0xc001_d00d),
                keys: SaKeys::from_keymat(AeadAlg::AesGcm128, &[0x5a; 20]).unwrap(),
                esn: true,
                replay_window: 1024,
                local: a(1),
                remote: a(2),
                encap: None,
                local_ts: "10.1.0.0/16".parse().unwrap(),
                remote_ts: "10.2.0.0/16".parse().unwrap(),
                outer_ttl: 64,
                resume: Default::default(),
                checkpoint: None,
                lifetime: Default::default(),
            },
        },
    }
}

fn ring(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring");
    g.throughput(Throughput::Elements(1));
    let record = [0xabu8; 256];
    for zeroize in [false, true] {
        let p = path(if zeroize { "ring-z" } else { "ring" });
        let region = Region::create(
            &p,
            &[RingSpec {
                kind: RingKind::Punt,
                index: 0,
                slot_size: 512,
                slot_count: 1024,
                zeroize,
            }],
        )
        .unwrap();
        let mut tx = region.producer(0).unwrap();
        let mut rx = region.consumer(0).unwrap();
        let mut buf = [0u8; 512];
        let tag = if zeroize { "zeroize" } else { "plain" };
        g.bench_function(format!("push_pop_256B/{tag}/copy"), |b| {
            b.iter(|| {
                tx.try_push(black_box(&record)).unwrap();
                black_box(rx.try_pop(&mut buf).unwrap())
            })
        });
        g.bench_function(format!("push_pop_256B/{tag}/in_place"), |b| {
            b.iter(|| {
                tx.try_push(black_box(&record)).unwrap();
                let r = rx.try_read().unwrap().unwrap();
                black_box(r[255])
            })
        });
        // A burst of 32: pushes, then one drain (one head store for the batch).
        g.throughput(Throughput::Elements(32));
        g.bench_function(format!("push32_drain_256B/{tag}"), |b| {
            b.iter(|| {
                for _ in 0..32 {
                    tx.try_push(black_box(&record)).unwrap();
                }
                let mut sum = 0u32;
                rx.drain(32, |r| sum += u32::from(r[0])).unwrap();
                black_box(sum)
            })
        });
        g.throughput(Throughput::Elements(1));
    }
    g.finish();
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));
    let u = add_sa();
    let len = u.encoded_len().unwrap();
    println!("AddSa encodes to {len} bytes");
    let mut buf = vec![0u8; len];
    g.bench_function("add_sa/encode_decode", |b| {
        b.iter(|| {
            let n = black_box(&u).encode(&mut buf).unwrap();
            black_box(UpdateEnvelope::decode(&buf[..n]).unwrap())
        })
    });
    g.bench_function("add_sa/encode", |b| {
        b.iter(|| black_box(black_box(&u).encode(&mut buf).unwrap()))
    });
    g.bench_function("add_sa/decode", |b| {
        b.iter(|| black_box(UpdateEnvelope::decode(black_box(&buf)).unwrap()))
    });
    // Through a worker's update ring (zeroized on consumption), as the transport will use it.
    let p = path("chan");
    let ch = ControlChannel::create_with(&p, 1, &ChannelSizes::default()).unwrap();
    let mut tx = ch.update_sender(0).unwrap();
    let mut rx = ch.update_receiver(0).unwrap();
    g.bench_function("add_sa/send_recv_update_ring", |b| {
        b.iter(|| {
            tx.try_send(black_box(&u)).unwrap();
            black_box(rx.try_recv().unwrap().unwrap())
        })
    });
    g.finish();
}

criterion_group!(benches, ring, codec);
criterion_main!(benches);
