//! SPD lookup at 10, 1k and 10k rules against a linear first-match scan of the same rules, and
//! the build time of a 10k-rule SPD.
//!
//! The rule mix is a site-to-site gateway's: per site, a TCP/22 discard and a UDP 5000-5999
//! protect rule on the /24 pair, a host route (/32 -> /24) and the /24 pair itself; a default
//! bypass at the end. Two key sets: `site` keys hit a site's rules (spread over every site),
//! `default` keys match no site and fall through to the default rule, the worst case for both
//! the tuple search (every tuple probed) and the scan (every rule tested). At 10 rules
//! `Spd::lookup` scans (fewer rules than 8 per tuple); above, it probes tuples.
//!
//! `cargo bench -p roamgate-pipeline --bench spd -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use pipeline::ids::SaId;
use pipeline::spd::{Action, FlowKey, PortRange, Prefix, Rule, Selector, Spd};

fn v4(a: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(a))
}

/// Site `s` is 10.x.y.0/24 on our side and 172.16+x.y.0/24 on theirs.
fn local(s: u32) -> u32 {
    0x0a00_0000 | (s << 8)
}

fn remote(s: u32) -> u32 {
    0xac10_0000 | (s << 8)
}

const RULES_PER_SITE: u32 = 4;

fn rules(n: usize) -> Vec<Rule> {
    let mut out = Vec::with_capacity(n);
    let p24 = |a: u32| Prefix::masked(v4(a), 24);
    let sel = |src: Prefix, dst: Prefix, proto: Option<u8>, dport: PortRange| Selector {
        src,
        dst,
        proto,
        src_ports: PortRange::ANY,
        dst_ports: dport,
    };
    let mut s = 0u32;
    'sites: loop {
        let site = [
            (
                sel(
                    p24(local(s)),
                    p24(remote(s)),
                    Some(6),
                    PortRange { lo: 22, hi: 22 },
                ),
                Action::Discard,
            ),
            (
                sel(
                    p24(local(s)),
                    p24(remote(s)),
                    Some(17),
                    PortRange { lo: 5000, hi: 5999 },
                ),
                Action::Protect(SaId(2 * s)),
            ),
            (
                sel(
                    Prefix::masked(v4(local(s) | 7), 32),
                    p24(remote(s)),
                    None,
                    PortRange::ANY,
                ),
                Action::Protect(SaId(2 * s + 1)),
            ),
            (
                sel(p24(local(s)), p24(remote(s)), None, PortRange::ANY),
                Action::Protect(SaId(2 * s)),
            ),
        ];
        for (selector, action) in site {
            if out.len() + 1 >= n {
                break 'sites;
            }
            out.push(Rule {
                id: out.len() as u32,
                selector,
                action,
            });
        }
        s += 1;
    }
    let any = Prefix::masked(v4(0), 0);
    out.push(Rule {
        id: out.len() as u32,
        selector: sel(any, any, None, PortRange::ANY),
        action: Action::Bypass,
    });
    out
}

fn sites(n: usize) -> u32 {
    ((n as u32).saturating_sub(1) / RULES_PER_SITE).max(1)
}

/// 1024 keys spread over every site: SSH, UDP 5001, HTTPS, and some from the host-route host.
fn site_keys(n: usize) -> Vec<FlowKey> {
    (0..1024u32)
        .map(|k| {
            let s = k.wrapping_mul(2_654_435_761) % sites(n);
            FlowKey {
                src: v4(local(s) | (k % 8 * 30 + 7)),
                dst: v4(remote(s) | 9),
                proto: [6, 17, 6][(k % 3) as usize],
                src_port: 40000,
                dst_port: [22, 5001, 443][(k % 3) as usize],
            }
        })
        .collect()
}

/// 1024 keys towards no configured site: only the default rule matches.
fn default_keys() -> Vec<FlowKey> {
    (0..1024u32)
        .map(|k| FlowKey {
            src: v4(0x0a00_0000 | k),
            dst: v4(0xc633_6400 | (k & 0xff)), // 198.51.100.0/24
            proto: 6,
            src_port: 40000,
            dst_port: 443,
        })
        .collect()
}

fn lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("spd-lookup");
    for n in [10usize, 1_000, 10_000] {
        let spd = Spd::new(rules(n)).expect("valid rules");
        assert_eq!(spd.len(), n);
        for (set, ks) in [("site", site_keys(n)), ("default", default_keys())] {
            for k in &ks {
                assert_eq!(
                    spd.lookup(k).map(|r| r.id),
                    spd.lookup_linear(k).map(|r| r.id)
                );
            }
            let mut i = 0;
            g.bench_with_input(BenchmarkId::new(format!("spd/{set}"), n), &n, |b, _| {
                b.iter(|| {
                    i = (i + 1) % ks.len();
                    black_box(spd.lookup(black_box(&ks[i])))
                })
            });
            g.bench_with_input(BenchmarkId::new(format!("linear/{set}"), n), &n, |b, _| {
                b.iter(|| {
                    i = (i + 1) % ks.len();
                    black_box(spd.lookup_linear(black_box(&ks[i])))
                })
            });
        }
    }
    g.finish();
    let r = rules(10_000);
    c.bench_function("spd-build-10k", |b| {
        b.iter(|| Spd::new(black_box(r.clone())).expect("valid"))
    });
}

criterion_group!(benches, lookup);
criterion_main!(benches);
