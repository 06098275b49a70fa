//! G-IKEv2 scale on one core (issue 22): a GCKS with 1,000 members. What a registration costs
//! the GCKS, what one rekey costs it (a new generation: one GSA_REKEY, its key wrapped under
//! the Rekey SA's GSK_w, addressed to 1,000 members), what a removal's rekey costs it (the
//! Rekey SA replaced: its key wrapped under each member's own KWK, then the new generation),
//! and what taking one rekey costs a member. Per-member cost = the time / 1,000.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ike::crypto::Prf;
use ike::group::gcks::{Gcks, GroupConfig};
use ike::group::keys::Kek;
use ike::group::member::Member;
use ike::wire::{Id, TrafficSelector};
use ike::Instant;

const MEMBERS: usize = 1000;

fn cfg(n: usize) -> GroupConfig {
    let ts = TrafficSelector {
        protocol: 0,
        start_port: 0,
        end_port: 65535,
        start: "10.0.0.0".parse().unwrap(),
        end: "10.255.255.255".parse().unwrap(),
    };
    GroupConfig {
        group: Id::from_text("branches.roamgate.test"),
        members: (0..n)
            .map(|i| Id::from_text(&format!("gw{i}.test")))
            .collect(),
        src: ts,
        dst: ts,
        key_bits: 128,
        lifetime: Duration::from_secs(3600),
        rekey_lead: Duration::from_secs(120),
        atd: Duration::from_secs(5),
        dtd: Duration::from_secs(60),
        sender_id_bits: 12,
        seed: [7; 32],
        delivery: Default::default(),
    }
}

fn kek(i: usize) -> Kek {
    let mut sk_d = [0u8; 32];
    sk_d[..8].copy_from_slice(&(i as u64).to_be_bytes());
    Kek::from_ike_sa(Prf::HmacSha256, &sk_d)
}

/// A GCKS with every member registered, and the members.
fn group(n: usize) -> (Gcks, Vec<Member>) {
    let c = cfg(n);
    let mut g = Gcks::new(c.clone(), Instant::ZERO).unwrap();
    let mut ms = Vec::with_capacity(n);
    for (i, id) in c.members.iter().enumerate() {
        let mut m = Member::new(c.group.clone(), true);
        let resp = g
            .register(Instant::ZERO, id, &kek(i), &m.registration_request())
            .unwrap();
        m.on_registration(Instant::ZERO, &kek(i), &resp).unwrap();
        ms.push(m);
    }
    (g, ms)
}

fn bench(c: &mut Criterion) {
    let mut b = c.benchmark_group("group");
    b.sample_size(10);
    b.throughput(Throughput::Elements(MEMBERS as u64));
    b.bench_function("register-1000-members", |x| x.iter(|| group(MEMBERS)));
    let (mut g, _) = group(MEMBERS);
    b.bench_function("gcks-rekey-1000-members", |x| {
        x.iter(|| g.rekey(Instant::from_nanos(1), false))
    });
    // What a removal costs: the Rekey SA replaced, its key wrapped once per member.
    b.bench_function("gcks-rekey-sa-replaced-1000-members", |x| {
        x.iter(|| g.rekey(Instant::from_nanos(1), true))
    });
    b.throughput(Throughput::Elements(1));
    // One member takes a fresh rekey each iteration (message ids keep growing); a group of
    // one, so that making the message is cheap.
    let (mut g, mut ms) = group(1);
    let t = std::cell::Cell::new(2u64);
    b.bench_function("member-takes-a-rekey", |x| {
        x.iter_batched(
            || {
                t.set(t.get() + 1);
                let out = g.rekey(Instant::from_nanos(t.get()), false);
                out.into_iter().next().unwrap().msg
            },
            |msg| {
                ms[0].on_rekey(Instant::from_nanos(t.get()), &msg).unwrap();
                ms[0].poll(Instant::from_nanos(u64::MAX));
            },
            criterion::BatchSize::SmallInput,
        )
    });
    b.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
