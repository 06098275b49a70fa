//! SPD lookup at 10, 1k and 10k rules against a linear first-match scan of the same rules, and
//! the build time of a 10k-rule SPD. The rule mix is a site-to-site gateway's: /24 pairs per
//! site with a few port-specific rules each, host routes, and a default at the end.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use pipeline::ids::SaId;
use pipeline::spd::{Action, FlowKey, PortRange, Prefix, Rule, Selector, Spd};

fn v4(a: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(a))
}

fn rules(n: usize) -> Vec<Rule> {
    let mut out = Vec::with_capacity(n);
    let mut i = 0u32;
    while out.len() + 1 < n {
        let site = 0x0a00_0000 | (i << 8);
        let remote = 0xac10_0000 | (i << 8);
        let sel = |src: Prefix, dst: Prefix, proto: Option<u8>, dport: PortRange| Selector {
            src,
            dst,
            proto,
            src_ports: PortRange::ANY,
            dst_ports: dport,
        };
        let p24 = |a: u32| Prefix::masked(v4(a), 24);
        let kind = i % 4;
        let selector = match kind {
            0 => sel(
                p24(site),
                p24(remote),
                Some(6),
                PortRange { lo: 22, hi: 22 },
            ),
            1 => sel(
                p24(site),
                p24(remote),
                Some(17),
                PortRange { lo: 5000, hi: 5999 },
            ),
            2 => sel(
                Prefix::masked(v4(site | 7), 32),
                p24(remote),
                None,
                PortRange::ANY,
            ),
            _ => sel(p24(site), p24(remote), None, PortRange::ANY),
        };
        let action = if kind == 0 {
            Action::Discard
        } else {
            Action::Protect(SaId(i))
        };
        out.push(Rule {
            id: out.len() as u32,
            selector,
            action,
        });
        i += 1;
    }
    let any = Prefix::masked(v4(0), 0);
    out.push(Rule {
        id: out.len() as u32,
        selector: Selector {
            src: any,
            dst: any,
            proto: None,
            src_ports: PortRange::ANY,
            dst_ports: PortRange::ANY,
        },
        action: Action::Bypass,
    });
    out
}

fn keys(n: usize) -> Vec<FlowKey> {
    let sites = (n / 4).max(1) as u32;
    (0..1024u32)
        .map(|k| {
            let i = (k.wrapping_mul(2_654_435_761)) % sites;
            FlowKey {
                src: v4(0x0a00_0000 | (i << 8) | (k % 200)),
                dst: v4(0xac10_0000 | (i << 8) | 9),
                proto: if k % 3 == 0 { 6 } else { 17 },
                src_port: 40000,
                dst_port: [22, 5001, 443][(k % 3) as usize],
            }
        })
        .collect()
}

fn lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("spd-lookup");
    for n in [10usize, 1_000, 10_000] {
        let spd = Spd::new(rules(n)).expect("valid rules");
        let ks = keys(n);
        for k in &ks {
            assert_eq!(
                spd.lookup(k).map(|r| r.id),
                spd.lookup_linear(k).map(|r| r.id)
            );
        }
        let mut i = 0;
        g.bench_with_input(BenchmarkId::new("tuple-space", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) % ks.len();
                black_box(spd.lookup(&ks[i]))
            })
        });
        g.bench_with_input(BenchmarkId::new("linear", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) % ks.len();
                black_box(spd.lookup_linear(&ks[i]))
            })
        });
    }
    g.finish();
    let r = rules(10_000);
    c.bench_function("spd-build-10k", |b| {
        b.iter(|| Spd::new(black_box(r.clone())).expect("valid"))
    });
}

criterion_group!(benches, lookup);
criterion_main!(benches);
